"""DVC stage evaluate@<dataset>-<model>: FID, IS, KID, precision/recall of the samples and the bits/dim bound."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.evaluate import evaluate_stage

if __name__ == "__main__":
    run_stage(evaluate_stage, with_model=True)
    finish()
