"""bf16 autocast: where ``auto`` turns it on, that training's forward pass and sampling's network evaluations run in
it, and that what the arithmetic around them (loss, optimizer, EMA, guidance, the sampler's steps) sees is fp32."""

import numpy as np
import pytest
import torch

from diffusionlab import device as device_module
from diffusionlab.device import autocast_dtype, native_bf16, precision_name
from diffusionlab.sampling.generation import draw_images
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.sampling.samplers import make_sampler
from diffusionlab.runtime.training import Trainer
from test_training import images, run_config  # noqa: F401  (images: the digits fixture)

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"amx_bf16", "amx_tile"}, True), (set(), False)])
def test_auto_turns_bf16_on_only_where_the_cpu_computes_in_it(flags, native, monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    assert native_bf16(CPU) is native
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert autocast_dtype(True, CPU) == torch.bfloat16  # asked for: also where emulated
    assert autocast_dtype(False, CPU) is None
    assert precision_name(autocast_dtype("auto", CPU)) == ("bf16" if native else "fp32")


def conv_output_dtypes(net: torch.nn.Module) -> list[torch.dtype]:
    seen = []
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_training_runs_its_forward_pass_in_the_precision_asked_and_keeps_the_weights_fp32(bf16, dtype, images):
    trainer = Trainer(run_config("vlb", bf16=bf16), images, CPU)
    seen = conv_output_dtypes(trainer.model)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.run(progress=False)
    assert seen and set(seen) == {dtype}
    assert result.precision == precision_name(dtype)
    assert all(np.isfinite(row["loss"]) for row in result.history)
    assert all(p.dtype == torch.float32 for p in [*result.model.parameters(), *result.ema.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(before, result.model.parameters()))


def test_sampling_under_autocast_evaluates_the_network_in_bf16_and_steps_in_fp32(images):
    cfg = run_config("ddpm", bf16=False)
    trainer = Trainer(cfg, images, CPU)
    trainer.run(progress=False)
    net = trainer.ema.module.eval()
    sampler = make_sampler(cfg.sample, trainer.process, default_steps=10)
    seen = conv_output_dtypes(net)
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 5)
    with torch.no_grad():
        fp32 = ConditionalModel(net, trainer.process, 1).denoiser()(x, t)
        assert set(seen) == {torch.float32}
        seen.clear()
        bf16 = ConditionalModel(net, trainer.process, 1, autocast=torch.bfloat16).denoiser()(x, t)
    assert set(seen) == {torch.bfloat16}
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.05), (bf16 - fp32).abs().max()
    with torch.no_grad():
        drawn = {dtype: draw_images(ConditionalModel(net, trainer.process, 1, autocast=dtype), sampler,
                                    np.arange(8), 8, (1, 8, 8), 8, CPU, 0) for dtype in (None, torch.bfloat16)}
    assert np.abs(drawn[None].astype(int) - drawn[torch.bfloat16]).mean() < 8  # of 255 gray levels
