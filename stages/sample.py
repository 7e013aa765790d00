"""DVC stage sample@<dataset>-<model>: draw samples, a grid and a denoising strip from the EMA weights."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.sample import sample_stage

if __name__ == "__main__":
    run_stage(sample_stage, with_model=True)
    finish()
