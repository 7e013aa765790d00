"""Degradation operators and the zero-shot restoration solvers, against closed forms: the adjoint identity, the
pseudo-inverse and the SVD of each operator, and the exact posterior mean of Gaussian data under a linear
measurement."""

import numpy as np
import pytest
import torch

from diffusionlab.core.updates import ddim_update
from diffusionlab.families.ddpm.process import GaussianDiffusion
from diffusionlab.families.ddpm.schedules import linear_betas
from diffusionlab.families.edm.process import EDM
from diffusionlab.families.flow.process import RectifiedFlow
from diffusionlab.families.vdm.gamma import make_gamma
from diffusionlab.families.vdm.process import VDM
from diffusionlab.sampling import operators as ops
from diffusionlab.sampling.restoration import BASELINES, Problem, SolverOptions, baseline, solve
from diffusionlab.tensors import ImageGenerators

from gaussian_data import DIMS, SHAPE, draw, exact_model, gaussian

F64 = torch.float64
IMAGE = (2, 8, 8)


def operator(name: str, shape=IMAGE, dtype=F64) -> ops.Operator:
    size = shape[1:]
    if name == "sr2":
        return ops.super_resolution(shape, 2, dtype=dtype)
    if name == "sr4":
        return ops.super_resolution(shape, 4, dtype=dtype)
    if name == "blur_reflect":
        return ops.gaussian_blur(shape, 0.8, "reflect", dtype=dtype)
    if name == "blur_cut":
        return ops.gaussian_blur(shape, 1.0, "reflect", dtype=dtype, cutoff=0.03)
    if name == "blur_zero":
        return ops.gaussian_blur(shape, 0.6, "zero", dtype=dtype)
    if name == "box":
        return ops.MaskOperator(ops.box_mask(size, 0.5).to(dtype), shape[0])
    if name == "random":
        return ops.MaskOperator(ops.random_mask(size, 0.5, seed=3).to(dtype), shape[0])
    if name == "denoise":
        return ops.MaskOperator(torch.ones(size, dtype=dtype), shape[0])
    raise ValueError(name)


OPERATORS = ["sr2", "sr4", "blur_reflect", "blur_cut", "blur_zero", "box", "random", "denoise"]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name", OPERATORS)
def test_the_adjoint_identity_holds(name):
    op = operator(name)
    x, y = randn(3, *IMAGE), op.restrict(randn(3, *op.A(torch.zeros(1, *IMAGE, dtype=F64)).shape[1:], seed=1))
    torch.testing.assert_close((op.A(x) * y).sum(), (x * op.At(y)).sum(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OPERATORS)
def test_the_pseudo_inverse_satisfies_a_a_plus_a_equals_a(name):
    op = operator(name)
    x = randn(3, *IMAGE)
    torch.testing.assert_close(op.A(op.pinv(op.A(x))), op.A(x), rtol=1e-9, atol=1e-9)
    # and A^+ A is an orthogonal projection: applied twice it changes nothing more
    once = op.pinv(op.A(x))
    torch.testing.assert_close(op.pinv(op.A(once)), once, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", OPERATORS)
def test_the_svd_reconstructs_the_operator_with_orthogonal_factors(name):
    op = operator(name)
    x = randn(3, *IMAGE)
    torch.testing.assert_close(op.U(op.singulars * op.Vt(x)), op.A(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(op.V(op.Vt(x)), x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(op.Vt(x).norm(), x.norm(), rtol=1e-9, atol=1e-9)
    y = op.A(x)
    torch.testing.assert_close(op.U(op.Ut(y)), y, rtol=1e-9, atol=1e-9)  # U^T is a left inverse of U on measurements
    if not getattr(op, "truncated", False):  # every measured value carries one coefficient
        assert op.measured.sum() * IMAGE[0] == op.measurement_size


def test_super_resolution_is_average_pooling_and_its_pseudo_inverse_repeats_pixels():
    op = operator("sr4")
    x = randn(2, *IMAGE)
    torch.testing.assert_close(op.A(x), torch.nn.functional.avg_pool2d(x, 4))
    y = op.A(x)
    torch.testing.assert_close(op.pinv(y), y.repeat_interleave(4, 2).repeat_interleave(4, 3))


@pytest.mark.parametrize("boundary", ["reflect", "zero"])
def test_the_blur_matrix_is_the_convolution_with_the_stated_boundary(boundary):
    kernel = ops.gaussian_kernel(1.0)
    signal = np.random.default_rng(0).normal(size=12)
    radius = len(kernel) // 2
    padded = np.pad(signal, radius, mode="reflect" if boundary == "reflect" else "constant")
    expected = np.convolve(padded, kernel, mode="valid")
    np.testing.assert_allclose(ops.convolution(12, kernel, boundary) @ signal, expected, rtol=1e-12)
    assert kernel.sum() == pytest.approx(1.0) and len(kernel) == 7


def test_a_blur_loses_what_it_attenuates_below_its_cutoff():
    full, cut = operator("blur_reflect"), operator("blur_cut")
    x = randn(2, *IMAGE)
    assert not full.truncated and cut.truncated and 0 < cut.measured.sum() < full.measured.sum() == 64
    torch.testing.assert_close(full.pinv(full.A(x)), x)  # an uncut noiseless blur is invertible
    assert (cut.pinv(cut.A(x)) - x).norm() > 0.1 * x.norm()


def test_masks_are_seeded_and_the_box_is_centred():
    assert torch.equal(ops.random_mask((16, 16), 0.3, 5), ops.random_mask((16, 16), 0.3, 5))
    assert not torch.equal(ops.random_mask((16, 16), 0.3, 5), ops.random_mask((16, 16), 0.3, 6))
    box = ops.box_mask((16, 16), 0.5)
    assert box.sum() == 256 - 64 and box[4:12, 4:12].sum() == 0 and box[:4].all()


def test_a_factor_that_does_not_divide_the_size_is_refused():
    with pytest.raises(ValueError, match="pooling factor of 3 does not divide the image size 16"):
        ops.super_resolution((1, 16, 16), 3)


def test_ddim_update_at_eta_1_is_the_ddpm_posterior_of_a_variance_preserving_process():
    """q(x_s | x_t, x_0) has mean (sqrt(a_s) b_t / (1 - a_t)) x_0 + (sqrt(alpha_t) (1 - a_s) / (1 - a_t)) x_t and
    variance (1 - a_s) / (1 - a_t) b_t, with a = alpha_bar and alpha_t = a_t / a_s, b_t = 1 - alpha_t."""
    a_t, a_s = 0.3, 0.6
    x0, x_t = randn(1, 4), randn(1, 4, seed=1)
    eps = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    at_t, at_s = (a_t**0.5, (1 - a_t) ** 0.5), (a_s**0.5, (1 - a_s) ** 0.5)
    x_s = ddim_update(x0, eps, at_t, at_s, 1.0, torch.Generator().manual_seed(4))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    ratio = a_t / a_s
    mean = a_s**0.5 * (1 - ratio) / (1 - a_t) * x0 + ratio**0.5 * (1 - a_s) / (1 - a_t) * x_t
    torch.testing.assert_close(x_s, mean + ((1 - a_s) / (1 - a_t) * (1 - ratio)) ** 0.5 * z)
    assert torch.equal(ddim_update(x0, eps, at_t, (1.0, 0.0), 1.0, None), x0)  # at the data: x_0 itself


# --- restoration of Gaussian data with the exact denoiser ------------------------------------------------------

GAUSS_OPS = {"sr2": lambda: ops.super_resolution(SHAPE, 2, dtype=F64),
             "box": lambda: ops.MaskOperator(ops.box_mask(SHAPE[1:], 0.5).to(F64), SHAPE[0]),
             "random": lambda: ops.MaskOperator(ops.random_mask(SHAPE[1:], 0.5, seed=1).to(F64), SHAPE[0]),
             "blur": lambda: ops.gaussian_blur(SHAPE, 0.5, "zero", dtype=F64)}
COPIES = 400


def matrix_of(op: ops.Operator) -> torch.Tensor:
    """A as a [m, D] matrix: its measured rows of A applied to the basis."""
    basis = torch.eye(DIMS, dtype=F64).reshape(DIMS, *SHAPE)
    rows = op.A(basis).reshape(DIMS, -1).T
    return rows[rows.abs().sum(1) > 0]


def posterior_mean(op, y, sigma_y, mu, cov):
    """E[x | y] = mu + Sigma A^T (A Sigma A^T + sigma_y^2 I)^-1 (y - A mu)."""
    a = matrix_of(op)
    y_flat = (op.A(torch.zeros(1, *SHAPE, dtype=F64)) * 0 + y[:1]).reshape(-1)
    measured = op.A(torch.ones(1, *SHAPE, dtype=F64)).reshape(-1) != 0 if isinstance(op, ops.MaskOperator) else None
    y_flat = y_flat[measured] if measured is not None else y_flat
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T + sigma_y**2 * torch.eye(len(a), dtype=F64))
    return (mu + gain @ (y_flat - a @ mu)).reshape(SHAPE)


def restore_gaussian(process, solver, op_name, sigma_y, steps, seed=0, **options):
    mu, cov = gaussian()
    op = GAUSS_OPS[op_name]()
    truth = draw(1, mu, cov, seed=seed + 7)
    y = op.measure(truth, sigma_y, randn(1, *op.A(truth).shape[1:], seed=seed + 11)).expand(COPIES, *op.A(truth).shape[1:])
    generators = ImageGenerators(range(COPIES))
    opts = SolverOptions(solver=solver, steps=steps, clip_denoised=False, **options)
    out = solve(exact_model(process, mu, cov), process, opts, Problem(op, y.clone(), sigma_y), generators)
    return out, posterior_mean(op, y, sigma_y, mu, cov), op.pinv(y[:1])[0], op, y


def ddpm_process():
    return GaussianDiffusion(linear_betas(1000), dtype=F64)


@pytest.mark.parametrize("solver,steps,extra", [("ddrm", 50, {}), ("ddnm", 50, {}), ("pigdm", 50, {"eta": 1.0}),
                                                ("pigdm", 50, {"eta": 1.0, "pigdm_form": "score"}),
                                                ("dps", 200, {"eta": 1.0, "zeta": 0.3})])
@pytest.mark.parametrize("op_name", ["sr2", "box", "random"])
def test_each_solver_restores_towards_the_exact_posterior_mean_better_than_the_pseudo_inverse(solver, steps, extra,
                                                                                              op_name):
    out, exact, pinv, _, _ = restore_gaussian(ddpm_process(), solver, op_name, 0.0, steps, **extra)
    mean = out.mean(0)
    solver_error, pinv_error = (mean - exact).norm().item(), (pinv - exact).norm().item()
    assert solver_error < 0.5 * pinv_error, (solver_error, pinv_error)
    if solver in ("ddrm", "ddnm"):  # the exact-posterior samplers, close to it within their Monte Carlo error
        assert solver_error < 0.1, solver_error


@pytest.mark.parametrize("solver", ["ddrm", "ddnm"])
@pytest.mark.parametrize("op_name", ["sr2", "box", "random", "blur"])
def test_noiseless_ddrm_and_ddnm_keep_the_measurement_exactly(solver, op_name):
    out, _, _, op, y = restore_gaussian(ddpm_process(), solver, op_name, 0.0, 20)
    assert op.consistency(out, y).max() < 1e-9


@pytest.mark.parametrize("solver,extra", [("ddrm", {}), ("ddnm", {}), ("pigdm", {"eta": 1.0}),
                                          ("pigdm", {"eta": 1.0, "pigdm_form": "score"})])
@pytest.mark.parametrize("op_name", ["sr2", "blur"])
def test_with_measurement_noise_the_solvers_move_towards_the_posterior_mean(solver, extra, op_name):
    """sigma_y = 0.2: the posterior mean no longer passes through y (and the blur, invertible on these tiny
    images, no longer determines x); DDNM+'s and DDRM's noise rules and PiGDM's r_t^2 A A^T + sigma_y^2 I weigh
    the measurement against the prior."""
    out, exact, pinv, op, y = restore_gaussian(ddpm_process(), solver, op_name, 0.2, 50, **extra)
    assert (out.mean(0) - exact).norm() < 0.5 * (pinv - exact).norm()


@pytest.mark.parametrize("family", ["vdm", "flow", "edm"])
@pytest.mark.parametrize("solver", ["ddrm", "ddnm", "pigdm"])
def test_the_solvers_drive_every_process_through_its_marginals(family, solver):
    """A continuous log-SNR process, a rectified flow (whose first time has alpha = 0) and a variance-exploding one
    (started from N(0, 80^2 I)): the same posterior."""
    process = {"vdm": lambda: VDM(make_gamma("fixed", -13.3, 5.0)), "flow": lambda: RectifiedFlow("uniform"),
               "edm": lambda: EDM(sigma_data=0.5)}[family]().double()
    out, exact, pinv, _, _ = restore_gaussian(process, solver, "box", 0.0, 50, **({"eta": 1.0} if solver == "pigdm" else {}))
    assert (out.mean(0) - exact).norm() < 0.5 * (pinv - exact).norm()


@pytest.mark.parametrize("op_name", ["sr2", "box", "blur"])
def test_pigdm_as_its_paper_writes_it_pulls_towards_a_noisy_measurement_at_every_step_the_score_form_does_not(op_name):
    """Algorithm 1's correction alpha_s alpha_t r_t^2 g keeps its order as sigma_t falls, where the score's weight
    sigma_t^2 / alpha_t vanishes: at sigma_y = 0.2 the paper's form keeps pulling A x towards y over the last steps,
    below the measurement's noise (0.12-0.17 per value), while the score form stays at it (0.20-0.26)."""
    residual = {}
    for form in ("paper", "score"):
        out, _, _, op, y = restore_gaussian(ddpm_process(), "pigdm", op_name, 0.2, 50, eta=1.0, pigdm_form=form)
        residual[form] = op.consistency(out, y).mean().item()
    assert residual["paper"] < 0.8 * residual["score"] and residual["score"] > 0.18, residual


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_keep_what_is_measured(name):
    op = operator("box")
    x = randn(2, *IMAGE)
    out = baseline(name, Problem(op, op.A(x), 0.0))
    torch.testing.assert_close(op.A(out), op.A(x))
    if name == "fill":  # the hole takes values between those around it, no longer 0
        hole = out[..., 2:6, 2:6]
        assert hole.abs().sum() > 0 and hole.max() <= x.max() and hole.min() >= x.min()


def test_fill_needs_a_mask():
    with pytest.raises(ValueError, match="needs a mask"):
        baseline("fill", Problem(operator("sr2"), torch.zeros(1, 2, 4, 4, dtype=F64), 0.0))


def test_restorations_depend_on_each_image_seed_alone():
    process = ddpm_process()
    mu, cov = gaussian()
    op = GAUSS_OPS["box"]()
    y = op.A(draw(4, mu, cov))
    model = exact_model(process, mu, cov)
    opts = SolverOptions(solver="ddrm", steps=10, clip_denoised=False)
    whole = solve(model, process, opts, Problem(op, y, 0.0), ImageGenerators([5, 6, 7, 8]))
    part = solve(model, process, opts, Problem(op, y[2:], 0.0), ImageGenerators([7, 8]))
    torch.testing.assert_close(whole[2:], part)


def test_the_summary_tests_each_method_against_the_best_solver_and_the_pseudo_inverse():
    """Three draws: ddrm's FID 1.0 ± 0.1 against dps's 5.0 ± 0.1 and the deterministic pinv's 9.0."""
    import pandas as pd

    from diffusionlab.evaluation.restoration import best_per_task, summary

    rows = []
    for d in range(3):
        base = {"task": "sr4", "draw": d, "images": 10, "sigma_y": 0.0}
        rows += [{**base, "method": "truth", "kind": "truth", "fid_classifier": 0.5, "class_accuracy": 1.0},
                 {**base, "method": "pinv", "kind": "baseline", "fid_classifier": 9.0, "psnr": 15.0,
                  "class_accuracy": 0.2},
                 {**base, "method": "ddrm", "kind": "solver", "fid_classifier": 1.0 + 0.1 * (d - 1), "psnr": 20.0 + d,
                  "class_accuracy": 0.8},
                 {**base, "method": "dps", "kind": "solver", "fid_classifier": 5.0 + 0.1 * (d - 1), "psnr": 25.0,
                  "class_accuracy": 0.7}]
    table = summary(pd.DataFrame(rows), 0.05).set_index("method")
    assert table.loc["ddrm", "fid_classifier_best"] and not table.loc["dps", "fid_classifier_best"]
    assert table.loc["ddrm", "fid_classifier_std"] == pytest.approx(0.1) and table.loc["pinv", "fid_classifier_std"] == 0
    assert table.loc["dps", "fid_classifier_vs_best"] == pytest.approx(4.0) and table.loc["dps", "fid_classifier_vs_best_p"] < 1e-3
    assert table.loc["ddrm", "fid_classifier_vs_pinv"] == pytest.approx(-8.0)
    best = best_per_task({"digits-ddpm": table.reset_index()}, 0.05).iloc[0]
    assert best["best FID (classifier)"] == "ddrm 1.00 ± 0.10" and best["best vs pinv (classifier)"].startswith("better")
    assert best["best PSNR (dB)"] == "dps 25.00"
    assert best["class accuracy: pinv / best solver / truth"] == "0.20 / ddrm 0.80 / 1.00"
