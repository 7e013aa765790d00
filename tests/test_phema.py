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
