"""DVC stage prepare@<dataset>: download (or load) a dataset and write its prepared form."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.prepare import prepare_stage

if __name__ == "__main__":
    run_stage(prepare_stage, with_model=False)
    finish()
