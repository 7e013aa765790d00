"""``edm``: the preconditioned denoiser, noise distribution and sampler of Karras et al. 2022."""
