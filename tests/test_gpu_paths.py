"""The code paths a GPU run takes, run on the CPU before any GPU does: ``train.compile`` (torch.compile, inductor's
C++ backend) and ``train.channels_last``, each trained a few steps next to the eager contiguous run, its checkpoint
loaded into an eager network that samples the images of its weights. bf16 autocast: tests/test_precision.py."""

import numpy as np
import pytest
import torch

from diffusionlab.runtime.checkpoint import load_checkpoint, save_checkpoint
from diffusionlab.runtime.training import Trainer
from diffusionlab.sampling.generation import draw_images
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.sampling.samplers import make_sampler
from test_training import images, run_config  # noqa: F401  (images: the digits fixture)

CPU = torch.device("cpu")


def drawn(net, process, cfg):
    sampler = make_sampler(cfg.sample, process, default_steps=10)
    with torch.no_grad():
        return draw_images(ConditionalModel(net.eval(), process, 1), sampler, np.arange(6), 6, (1, 8, 8), 6, CPU, 0)


@pytest.mark.parametrize("switch", ["compile", "channels_last"])
def test_a_gpu_switch_trains_as_eager_fp32_does_and_its_checkpoint_samples_in_an_eager_network(switch, images,
                                                                                                tmp_path):
    eager_cfg = run_config("ddpm", bf16=False, compile=False, channels_last=False)
    cfg = run_config("ddpm", bf16=False, compile=switch == "compile", channels_last=switch == "channels_last")
    eager = Trainer(eager_cfg, images, CPU).run(progress=False)
    trainer = Trainer(cfg, images, CPU)
    if switch == "compile":
        assert trainer.forward_model is not trainer.model  # the compiled module trains, the plain one is saved
    else:
        weights = [p for p in trainer.model.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    result = trainer.run(progress=False)
    # the same function of the same batches: the losses agree to float rounding, step by step
    np.testing.assert_allclose([r["loss"] for r in result.history], [r["loss"] for r in eager.history], rtol=1e-3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, cfg, 1, result.steps, result.model, result.ema, result.process)
    loaded = load_checkpoint(path)
    assert all(not k.startswith("_orig_mod") for k in loaded.ema.state_dict())
    assert all(p.is_contiguous() for p in loaded.ema.parameters())  # an eager network in the default format
    np.testing.assert_array_equal(drawn(loaded.ema, loaded.process, cfg), drawn(result.ema, result.process, cfg))
