"""Post-hoc EMA (Karras et al. 2024): the power-function profile in closed form, and an EMA of any width rebuilt
from the snapshots of two against one tracked directly."""

import numpy as np
import pytest
import torch

from diffusionlab.nn.phema import (PowerEMA, combine, gamma_to_sigma_rel, reconstruction, sigma_rel_to_gamma,
                                   step_weights)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.27])
def test_the_width_and_the_exponent_invert_each_other(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma > -0.45 and gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    assert sigma_rel_to_gamma(0.05) > sigma_rel_to_gamma(0.1)  # a narrower EMA forgets the early weights faster


def test_the_step_weights_are_those_of_the_recurrence_and_sum_to_one():
    gamma, t = 6.94, 37
    weights = np.zeros(t)
    for step in range(1, t + 1):  # follow each step's weight through theta_hat = beta theta_hat + (1 - beta) theta
        beta = (1 - 1 / step) ** (gamma + 1)
        weights *= beta
        weights[step - 1] += 1 - beta
    assert np.allclose(step_weights(t, gamma), weights, rtol=1e-12, atol=1e-15)
    assert step_weights(t, gamma).sum() == pytest.approx(1.0, abs=1e-12)


def test_an_ema_of_another_width_is_rebuilt_from_two_tracked_ones_within_1e_3():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    tracked, target = PowerEMA(model, [0.05, 0.10]), PowerEMA(model, [0.075])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    snapshots, states = [], []
    data = torch.randn(64, 6)
    for step in range(1, 401):
        loss = (model(data) - data[:, :3].sin()).pow(2).mean() + 0.01 * torch.randn(())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracked.update(model, step)
        target.update(model, step)
        if step % 20 == 0:
            for gamma, average in zip(tracked.gammas, tracked.averages):
                snapshots.append((step, gamma))
                states.append({k: v.clone() for k, v in average.items()})
    x = reconstruction(snapshots, 400, sigma_rel_to_gamma(0.075))
    rebuilt = combine(states, x)
    direct = target.averages[0]
    for key, value in direct.items():
        error = (rebuilt[key] - value).norm() / value.norm()
        assert error < 1e-3, (key, error.item())
    raw = model.state_dict()  # the reconstruction is far closer than the raw weights are
    assert any((raw[k] - direct[k]).norm() / direct[k].norm() > 1e-2 for k in direct)


def test_training_tracks_the_snapshots_resumes_them_after_a_kill_and_the_command_rebuilds_a_checkpoint(tmp_path):
    from diffusionlab import phema
    from diffusionlab.datasets import prepare_digits
    from diffusionlab.pipeline.train import publish_phema
    from diffusionlab.runtime.checkpoint import (load_checkpoint, load_phema_snapshots, save_checkpoint,
                                                 save_phema_snapshot)
    from diffusionlab.runtime.training import Trainer
    from test_training import CPU, Interrupted, run_config

    cfg = run_config("ddpm", phema_widths=[0.05, 0.10], phema_every=3)
    images = prepare_digits(8, 300, 0).train_images[:64]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = Trainer(cfg, images, CPU)
    result = full.run(progress=False, on_snapshot=lambda t: save_phema_snapshot(full_dir, t.step, t.phema))
    saved = {}

    def crash_after_step_8(trainer):
        saved["state"] = trainer.state_dict()
        if trainer.step == 8:
            raise Interrupted

    first = Trainer(cfg, images, CPU)
    with pytest.raises(Interrupted):
        first.run(progress=False, on_checkpoint=crash_after_step_8,
                  on_snapshot=lambda t: save_phema_snapshot(resumed_dir, t.step, t.phema))
    again = Trainer(cfg, images, CPU)
    again.load_state_dict(saved["state"])
    again.run(progress=False, on_snapshot=lambda t: save_phema_snapshot(resumed_dir, t.step, t.phema))
    a, b = load_phema_snapshots(full_dir), load_phema_snapshots(resumed_dir)
    assert [s["step"] for s in a] == [s["step"] for s in b] == [3, 6, 9, 12]
    for x, y in zip(a, b):
        for ax, ay in zip(x["averages"], y["averages"]):
            assert all(torch.equal(ax[k], ay[k]) for k in ax)

    save_checkpoint(tmp_path / "checkpoint.pt", cfg, 1, 12, result.model, result.ema, result.process)
    (tmp_path / "phema").mkdir()
    (tmp_path / "phema" / "00000099.pt").write_bytes(b"an earlier run's")
    publish_phema(full_dir, tmp_path / "phema")  # the train stage's layout: checkpoint.pt beside phema/
    assert sorted(f.name for f in (tmp_path / "phema").iterdir()) == sorted(f.name for f in full_dir.iterdir())
    phema.main([str(tmp_path), "--width", "0.075", "--out", str(tmp_path / "rebuilt.pt")])
    rebuilt = load_checkpoint(tmp_path / "rebuilt.pt")
    assert not all(torch.equal(p, q) for p, q in zip(rebuilt.ema.parameters(), result.ema.parameters()))
    with pytest.raises(SystemExit):
        phema.main([str(resumed_dir), "--width", "0.075", "--out", str(tmp_path / "x.pt")])  # no checkpoint there


def test_the_sample_stage_draws_each_rebuilt_width_as_the_command_rebuilds_it_and_the_evaluation_judges_it(tmp_cwd):
    from diffusionlab import paths, phema
    from diffusionlab.datasets import prepare_digits
    from diffusionlab.pipeline.sample import draw, ema_networks
    from diffusionlab.runtime.checkpoint import load_checkpoint, save_checkpoint, save_phema_snapshot
    from diffusionlab.runtime.training import Trainer
    from diffusionlab.sampling.samplers import make_sampler
    from diffusionlab.validation import replace
    from test_training import CPU, run_config

    cfg = run_config("ddpm", phema_widths=[0.05, 0.10], phema_every=3)
    cfg = cfg.model_copy(update={"sample": replace(cfg.sample, steps=4, num_samples=3, draws=2, batch_size=6,
                                                   sweep_steps=(), guidance_sweep=(), ema_widths=(0.075, 0.15))})
    trainer = Trainer(cfg, prepare_digits(8, 300, 0).train_images[:64], CPU)
    result = trainer.run(progress=False, on_snapshot=lambda t: save_phema_snapshot(
        paths.phema("digits", "ddpm"), t.step, t.phema))
    train_dir = paths.train("digits", "ddpm")
    save_checkpoint(train_dir / "checkpoint.pt", cfg, 1, result.steps, result.model, result.ema, result.process)
    ckpt = load_checkpoint(train_dir / "checkpoint.pt")
    sampler = make_sampler(cfg.sample, ckpt.process, default_steps=cfg.model.timesteps)
    samples = draw(cfg, ckpt, sampler, CPU, emas=ema_networks(cfg, ckpt))
    assert sorted(samples.ema) == [0.075, 0.15]
    main = samples.generated.images
    assert all(x.shape == main.shape and not np.array_equal(x, main) for x in samples.ema.values())
    phema.main([str(train_dir), "--width", "0.15", "--out", "rebuilt.pt"])
    rebuilt = load_checkpoint("rebuilt.pt")
    np.testing.assert_array_equal(draw(cfg, rebuilt, sampler, CPU).generated.images, samples.ema[0.15])


def test_each_width_is_judged_against_the_default_ema_by_welchs_test_and_the_best_is_the_lowest_mean():
    import pandas as pd
    import scipy.stats

    from diffusionlab.pipeline.evaluate import best_ema_width, ema_widths

    fids = {None: [3.0, 3.4, 2.9], 0.05: [2.0, 2.2, 2.1], 0.1: [2.9, 3.3, 3.6]}
    rows = pd.DataFrame([{"steps": 10, "guidance": None, "ema_width": w, "backend": "classifier", "draw": d, "fid": v}
                         for w, values in fids.items() for d, v in enumerate(values)])
    table = ema_widths(rows, 0.05)
    for w in (0.05, 0.1):
        row = table[table.ema_width == w].iloc[0]
        expected = scipy.stats.ttest_ind(fids[w], fids[None], equal_var=False)
        assert row.fid_vs_default == pytest.approx(np.mean(fids[w]) - np.mean(fids[None]))
        assert row.fid_vs_default_p == pytest.approx(expected.pvalue, rel=1e-6)
    best = best_ema_width(table, 0.05)["classifier"]
    assert best["best_width"] == 0.05 and best["beyond_noise"] and best["default_fid"] == pytest.approx(np.mean(fids[None]))
    assert best_ema_width(table, 1e-9)["classifier"]["beyond_noise"] is False
    assert ema_widths(rows[rows.ema_width.isna()], 0.05).empty


def test_widths_to_score_without_snapshots_are_refused_when_the_params_are_read():
    import yaml

    from diffusionlab.config.params import parse_params
    from test_training import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sample"]["ema_widths"] = [0.1]
    with pytest.raises(ValueError, match="train.phema_widths"):
        parse_params(raw)
    raw["train"]["phema_widths"] = [0.05, 0.1]
    assert parse_params(raw).sample.ema_widths == (0.1,)
