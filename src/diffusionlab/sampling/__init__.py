"""The sampling layer: family-agnostic samplers over a denoiser and a grid of times, guidance, inverse problems and the generation loop."""
