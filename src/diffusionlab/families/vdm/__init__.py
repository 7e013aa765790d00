"""``vdm`` (Kingma et al. 2021; Kingma & Gao 2023): continuous time on a log-SNR schedule."""
