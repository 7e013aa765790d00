import math

import numpy as np
import pytest

from diffusionlab.families.ddpm.schedules import cosine_alpha_bar, cosine_betas, linear_betas, make_betas


def test_linear_schedule_matches_ho_et_al_for_1000_steps():
    betas = linear_betas(1000)
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1] == pytest.approx(0.02, abs=1e-15)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)


def test_linear_schedule_scales_endpoints_for_other_lengths():
    betas = linear_betas(250)
    assert betas[0] == pytest.approx(4e-4) and betas[-1] == pytest.approx(0.08)


def test_cosine_schedule_reproduces_its_alpha_bar():
    T, s = 1000, 0.008
    betas = cosine_betas(T, s=s)
    alpha_bar = np.cumprod(1 - betas)
    t = np.arange(1, T + 1) / T
    expected = cosine_alpha_bar(t, s) / cosine_alpha_bar(0.0, s)
    # Only the clipped final steps may deviate.
    unclipped = betas < 0.999
    assert np.allclose(alpha_bar[unclipped], expected[unclipped], rtol=1e-10, atol=1e-12)
    assert cosine_alpha_bar(0.0, s) == pytest.approx(math.cos(s / (1 + s) * math.pi / 2) ** 2)


def test_cosine_schedule_clips_betas_at_0_999():
    betas = cosine_betas(1000)
    assert betas.max() == pytest.approx(0.999)
    assert (betas > 0).all() and (np.diff(betas) >= 0).all()


def test_unknown_schedule_name_raises():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        make_betas("quadratic", 10)
