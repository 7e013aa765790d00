"""DVC stage autoencoder@<dataset>: the latent autoencoder of the latent models (latent: true)."""

from _environment import project_environment

with project_environment():
    from diffusionlab.pipeline.autoencoder import autoencoder_stage
    from diffusionlab.pipeline.cli import run_stage

if __name__ == "__main__":
    run_stage(autoencoder_stage, with_model=False)
