"""diffusionlab."""
