"""Figures drawn from the model's own process: its times, its labels and its marginals, for every family."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.families.params import PARAMS
from diffusionlab.families.registry import build_process
from diffusionlab.viz.figures import forward_process_figure


@pytest.mark.parametrize("family", sorted(PARAMS))
def test_the_forward_figure_shows_the_models_own_process_from_the_data_to_the_noise(family, tmp_path):
    process = build_process(PARAMS[family](timesteps=50, **({"schedule": "cosine"} if family == "ddpm" else {})))
    grid = process.likelihood_grid(5)
    alphas, sigmas = np.array(grid.alphas[::-1]), np.array(grid.sigmas[::-1])
    assert alphas[0] > 0.99 and sigmas[-1] > 0.99 and np.all(np.diff(sigmas) > 0)  # clean to noisy
    forward_process_figure(torch.zeros(1, 8, 8), process, tmp_path / "forward.png")
    assert Image.open(tmp_path / "forward.png").size[0] > 300


def test_time_labels_follow_the_papers_steps_or_the_continuous_time():
    assert build_process(PARAMS["ddpm"](timesteps=50, schedule="cosine")).time_label(49) == "t=50"
    assert build_process(PARAMS["vdm"](gamma="fixed")).time_label(0.25) == "t=0.25"
    assert build_process(PARAMS["flow"]()).time_label(1.0) == "t=1"
