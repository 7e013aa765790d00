"""DVC stage check: validate the whole of params.yaml, so that a bad key anywhere stops the run before any work."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.check import check_stage
    from diffusionlab.pipeline.cli import run_stage

if __name__ == "__main__":
    run_stage(check_stage, with_model=False, with_dataset=False)
    finish()
