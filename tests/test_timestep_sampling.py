import numpy as np
import pytest
import torch

from diffusionlab.families.ddpm.timestep_sampling import LossSecondMomentSampler, UniformSampler


def test_uniform_sampler_has_unit_weights():
    t, w = UniformSampler(10).sample(1000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.all(w == 1.0) and set(t.tolist()) == set(range(10))


def test_importance_sampler_is_uniform_until_ten_losses_per_step():
    sampler = LossSecondMomentSampler(4)
    for _ in range(9):
        sampler.update(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert np.allclose(sampler.probabilities(), 0.25)
    sampler.update(torch.arange(3), torch.tensor([1.0, 2.0, 3.0]))
    assert not sampler.warmed_up()
    sampler.update(torch.tensor([3]), torch.tensor([4.0]))
    assert sampler.warmed_up()


def test_importance_probabilities_follow_the_root_mean_square_loss():
    sampler = LossSecondMomentSampler(3, uniform_prob=0.0)
    for _ in range(10):
        sampler.update(torch.arange(3), torch.tensor([1.0, 3.0, 4.0]))
    assert np.allclose(sampler.probabilities(), [1 / 8, 3 / 8, 4 / 8])
    for _ in range(10):  # the history keeps only the last 10 losses per step
        sampler.update(torch.arange(3), torch.tensor([2.0, 2.0, 4.0]))
    assert np.allclose(sampler.probabilities(), [0.25, 0.25, 0.5])


def test_importance_weighted_losses_estimate_the_uniform_mean_without_bias():
    losses = torch.tensor([0.1, 0.5, 2.0, 8.0, 0.01])
    sampler = LossSecondMomentSampler(5)
    for _ in range(10):
        sampler.update(torch.arange(5), losses)
    t, w = sampler.sample(400_000, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert (w * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=0.01)
    assert (w * losses[t]).std() < losses[torch.randint(0, 5, (400_000,))].std()  # and with less variance
