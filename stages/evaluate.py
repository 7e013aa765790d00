"""DVC stage evaluate@<dataset>-<model>: FID and Inception Score of the samples against the test split."""

from diffusionlab.cli import run_stage
from diffusionlab.pipeline.evaluate import evaluate_stage

if __name__ == "__main__":
    run_stage(evaluate_stage, with_model=True)
