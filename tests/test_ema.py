import pytest
import torch
from torch import nn

from diffusionlab.nn.ema import ema_decay, make_ema


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_its_recursion_with_the_warm_up_decay(warmup):
    """After the first update copies the weights, update n (n = 1, 2, ...) gives
    avg <- d_n avg + (1 - d_n) w, d_n = min(decay, (1 + n) / (10 + n)) with warm-up, else decay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = make_ema(model, 0.9, warmup)
    expected = None
    for n in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
            model[1].running_mean.copy_(torch.randn(4))
        current = [t.detach().clone() for t in [*model.parameters(), *model.buffers()]
                   if t.dtype.is_floating_point]
        ema.update_parameters(model)
        if expected is None:
            expected = current
        else:
            d = ema_decay(0.9, n, warmup)
            expected = [d * a + (1 - d) * w for a, w in zip(expected, current)]
        averaged = [t for t in [*ema.module.parameters(), *ema.module.buffers()] if t.dtype.is_floating_point]
        for a, e in zip(averaged, expected):
            assert torch.allclose(a, e, atol=1e-6)
    assert ema_decay(0.9, 1, True) == pytest.approx(2 / 11) and ema_decay(0.9, 1, False) == 0.9
    assert ema_decay(0.9, 10_000, True) == 0.9
