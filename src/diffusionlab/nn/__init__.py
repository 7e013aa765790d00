"""Networks that know nothing of noise processes: the U-Net, the EMA of its weights, and the feature networks."""
