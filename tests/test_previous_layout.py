"""Models written before the package took its layered form still load and draw the images they drew then.

``tests/data/previous_layout`` holds a tiny class-conditional ``vlb`` model's ``checkpoint.pt`` and a tiny ``vdm``
logged as an MLflow pytorch model (pickled as ``diffusionlab.model._rebuild``), both written by commit a123c26,
with the images each drew there (10 steps, seed 0; the ``vlb`` at guidance 2): with the model's own sampler
(``ddpm``, ancestral) and with a family-agnostic one (``dpmpp_2m``, ``dpmpp_2m_sde``), which now runs on the
process's grid of (alpha, sigma) and agrees with the earlier code to float rounding. Those images came from one
generator stream per batch; drawn from that stream again (:func:`drawn_from_one_stream`), they are the same
today, while :meth:`DiffusionModel.sample` now seeds every image on its own.
"""

from pathlib import Path

import numpy as np
import torch

from diffusionlab.runtime.checkpoint import load_checkpoint
from diffusionlab.runtime.model import DiffusionModel
from diffusionlab.sampling.base import sample
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.tensors import to_uint8

DATA = Path(__file__).resolve().parent / "data" / "previous_layout"


def assert_same_images(drawn: np.ndarray, expected: np.ndarray) -> None:
    """Equal but for a pixel level here and there (another CPU's kernels may round a value the other way)."""
    assert drawn.shape == expected.shape and drawn.dtype == expected.dtype
    diff = np.abs(drawn.astype(np.int64) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, f"{(diff > 0).sum()} pixels differ, by up to {diff.max()}"


def drawn_from_one_stream(model: DiffusionModel, n: int, seed: int, **options) -> np.ndarray:
    """``n`` images as the previous layout drew them: the noise, then every step's, from one generator."""
    s = model.sample_config(**options)
    net = ConditionalModel(model.network, model.process, model.channels, s.guidance)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *model.image_shape), generator=generator)
    labels = model.labels(n, s)
    x, _ = sample(net.denoiser(None if labels is None else torch.from_numpy(labels)), model.sampler(s), noise,
                  generator)
    return to_uint8(x).numpy()


def test_a_checkpoint_of_the_previous_layout_loads_and_samples_as_it_did():
    model = DiffusionModel.from_checkpoint(load_checkpoint(DATA / "vlb_checkpoint.pt"))
    assert model.config.model.family == "vlb" and model.num_classes == 10
    assert_same_images(drawn_from_one_stream(model, 6, 0, steps=10, guidance=2.0), np.load(DATA / "vlb_samples.npy"))
    assert_same_images(drawn_from_one_stream(model, 6, 0, sampler="dpmpp_2m", steps=10, guidance=2.0),
                       np.load(DATA / "vlb_samples_dpmpp_2m.npy"))
    assert model.sample(6, steps=10, seed=0, guidance=2.0).shape == (6, 1, 8, 8)


def test_an_mlflow_model_pickled_by_the_previous_layout_loads_and_samples_as_it_did():
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(str(DATA / "vdm_mlflow_model"), map_location="cpu")
    assert isinstance(model, DiffusionModel) and model.config.model.family == "vdm"
    assert_same_images(drawn_from_one_stream(model, 6, 0, steps=10), np.load(DATA / "vdm_samples.npy"))
    assert_same_images(drawn_from_one_stream(model, 6, 0, sampler="dpmpp_2m_sde", steps=10),
                       np.load(DATA / "vdm_samples_dpmpp_2m_sde.npy"))
