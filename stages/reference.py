"""DVC stage reference@<dataset>: cache the real training images' features and score the real-data floor."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.reference import reference_stage

if __name__ == "__main__":
    run_stage(reference_stage, with_model=False)
    finish()
