"""Figures and image grids."""
