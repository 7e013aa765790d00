"""DVC stage classifier@<dataset>: train the classifier whose features FID and IS are computed on."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.classifier import classifier_stage
    from diffusionlab.pipeline.cli import run_stage

if __name__ == "__main__":
    run_stage(classifier_stage, with_model=False)
    finish()
