"""``vlb`` (Nichol & Dhariwal 2021): the discrete-time diffusion with a learned reverse variance."""
