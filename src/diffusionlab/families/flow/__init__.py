"""``flow``: rectified flow (Liu et al. 2022; Esser et al. 2024)."""
