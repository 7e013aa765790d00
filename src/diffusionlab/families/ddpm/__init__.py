"""``ddpm`` (Ho et al. 2020): the discrete-time Gaussian diffusion on a beta schedule, which ``vlb`` shares."""
