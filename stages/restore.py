"""DVC stage restore@<dataset>-<model>-<task>: restore measured held-out images with each zero-shot solver, and
score them."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.restore import restore_stage

if __name__ == "__main__":
    run_stage(restore_stage, with_model=True, with_task=True)
    finish()
