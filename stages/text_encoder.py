"""DVC stage text_encoder@<dataset>: the tokenizer and the small CLIP of the dataset's text-conditioned models."""

from _environment import finish, project_environment

with project_environment():
    from diffusionlab.pipeline.cli import run_stage
    from diffusionlab.pipeline.text_encoder import text_encoder_stage

if __name__ == "__main__":
    run_stage(text_encoder_stage, with_model=False)
    finish()
