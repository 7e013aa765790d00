"""DVC stage train@<dataset>-<model>: train a diffusion model, tracked in MLflow."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.train import train_stage

if __name__ == "__main__":
    run_stage(train_stage, with_model=True)
    finish()
