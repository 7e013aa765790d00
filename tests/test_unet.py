import math

import pytest
import torch

from diffusionlab.nn.unet import UNet, UNetConfig, group_norm, timestep_embedding


@pytest.mark.parametrize("channels,groups", [(8, 2), (16, 4), (24, 2), (32, 8), (128, 32), (256, 32)])
def test_group_norm_keeps_at_least_four_channels_per_group(channels, groups):
    norm = group_norm(channels)
    assert norm.num_groups == groups and channels // norm.num_groups >= 4


def test_timestep_embedding_is_the_sinusoidal_formula():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10_000) * k / 4) for k in range(4)]
    expected = [[math.sin(v * f) for f in freqs] + [math.cos(v * f) for f in freqs] for v in t.tolist()]
    assert torch.allclose(emb, torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("size,mult,attn,out", [(16, (1, 2, 2), (4,), None), (28, (1, 2, 2), (7,), 2), (32, (1, 2), (), None)])
def test_unet_maps_images_to_outputs_of_the_same_size(size, mult, attn, out):
    cfg = UNetConfig(base_channels=16, channel_mult=mult, num_res_blocks=1, attention_resolutions=attn, num_heads=2)
    net = UNet(cfg, image_size=size, in_channels=1, out_channels=out)
    x = torch.randn(3, 1, size, size)
    y = net(x, torch.tensor([0, 10, 999]))
    assert y.shape == (3, out or 1, size, size)
    assert torch.equal(y, torch.zeros_like(y))  # the output layer starts at zero, as in Ho et al.'s code
    net(x, torch.tensor([0.5, 1.5, 2.5])).sum()  # continuous times (VDM) are accepted too
