"""Training survives faults: exact resume, atomic resume files, the non-finite guard, and checkpoints
that refuse what does not fit."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusionlab.config.params import parse_params
from diffusionlab.datasets import prepare_digits
from diffusionlab.errors import StageInputError, TrainingDiverged
from diffusionlab.runtime.checkpoint import load_checkpoint, load_resume, save_checkpoint, save_resume
from diffusionlab.runtime.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY_NET = {"image_size": 8, "train_steps": 12, "batch_size": 8,
            "unet": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                     "num_heads": 1, "dropout": 0.1}}
MODELS = {"ddpm": {"family": "ddpm", "schedule": "linear", "timesteps": 50},
          "vlb": {"family": "vlb", "schedule": "cosine", "timesteps": 50, "loss": "vlb", "importance_sampling": True},
          "vdm": {"family": "vdm", "gamma": "network", "timesteps": 50},
          "vdm_weighted": {"family": "vdm", "gamma": "fixed", "weighting": "edm", "noise_sampling": "adaptive",
                           "prediction": "x0", "timesteps": 50},
          "flow": {"family": "flow", "timesteps": 10},
          "edm": {"family": "edm", "timesteps": 6}}


def run_config(model="ddpm", **train):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["digits"].update(copy.deepcopy(TINY_NET))
    raw["models"] = MODELS
    raw["train"].update(log_every=3, warmup_steps=2, checkpoint_every=4, **train)
    return parse_params(raw).run("digits", model)


@pytest.fixture(scope="module")
def images():
    return prepare_digits(8, 300, 0).train_images[:64]


class Interrupted(Exception):
    pass


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), f"{name} differs"


@pytest.mark.parametrize("model", ["ddpm", "vlb", "vdm", "vdm_weighted", "flow", "edm"])
def test_a_run_interrupted_and_resumed_ends_bitwise_equal_to_an_uninterrupted_one(model, images, tmp_path):
    """Dropout, the data order, t and the noise, importance-sampling history, the adaptive log-SNR density,
    Adam, the LR warm-up and the EMA all continue where they stopped."""
    cfg = run_config(model)
    full = Trainer(cfg, images, CPU).run(progress=False)

    def crash_after_step_8(trainer):
        save_resume(tmp_path / "resume.pt", cfg, 1, trainer.state_dict(), None)
        if trainer.step == 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        Trainer(cfg, images, CPU).run(on_checkpoint=crash_after_step_8, progress=False)
    resume = load_resume(tmp_path / "resume.pt", cfg, 1, CPU)
    assert resume is not None and resume.trainer["step"] == 8
    trainer = Trainer(cfg, images, CPU)
    trainer.load_state_dict(resume.trainer)
    resumed = trainer.run(progress=False)
    assert_same_weights(full.model, resumed.model)
    assert_same_weights(full.ema, resumed.ema)
    if model.startswith("vdm") or model == "edm":  # a learned schedule; EDM's measured sigma_data
        assert_same_weights(full.process, resumed.process)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_a_resume_file_of_other_params_or_code_is_not_used(images, tmp_path, monkeypatch):
    cfg = run_config()
    trainer = Trainer(cfg, images, CPU)
    save_resume(tmp_path / "resume.pt", cfg, 1, trainer.state_dict(), "run-id")
    assert load_resume(tmp_path / "resume.pt", cfg, 1, CPU).mlflow_run_id == "run-id"
    assert load_resume(tmp_path / "resume.pt", run_config(lr=1e-3), 1, CPU) is None
    assert load_resume(tmp_path / "resume.pt", cfg, 3, CPU) is None
    monkeypatch.setattr("diffusionlab.runtime.checkpoint.code_fingerprint", lambda: "other code")
    assert load_resume(tmp_path / "resume.pt", cfg, 1, CPU) is None
    (tmp_path / "bad.pt").write_bytes(b"truncated")
    assert load_resume(tmp_path / "bad.pt", cfg, 1, CPU) is None
    assert load_resume(tmp_path / "missing.pt", cfg, 1, CPU) is None


def nan_at(trainer, step, where):
    """Make the loss, or one gradient, non-finite at ``step``."""
    process = trainer.process
    original = process.losses_for_batch

    def losses(*args, **kwargs):
        terms = original(*args, **kwargs)
        if trainer.step == step and where == "loss":
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    process.losses_for_batch = losses
    if where == "gradient":
        param = next(trainer.model.parameters())
        param.register_hook(lambda g: g * float("inf") if trainer.step == step else g)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_value_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(where, images,
                                                                                               tmp_path):
    cfg = run_config()
    trainer = Trainer(cfg, images, CPU)
    nan_at(trainer, 6, where)
    path = tmp_path / "resume.pt"
    with pytest.raises(TrainingDiverged, match=f"step 6: the {where}.* is (nan|inf).*train.skip_nonfinite"):
        trainer.run(on_checkpoint=lambda t: save_resume(path, cfg, 1, t.state_dict(), None), progress=False)
    kept = load_resume(path, cfg, 1, CPU)
    assert kept.trainer["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept.trainer["model"].values())


def test_skip_nonfinite_skips_the_batch_and_counts_it(images):
    cfg = run_config(skip_nonfinite=True)
    trainer = Trainer(cfg, images, CPU)
    nan_at(trainer, 5, "loss")
    result = trainer.run(progress=False)
    assert result.skipped == 1 and trainer.step == 12
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())
    assert trainer.scheduler.last_epoch == 11, "the skipped batch makes no update"


def test_a_checkpoint_of_another_architecture_names_the_mismatched_keys(images, tmp_path):
    cfg = run_config()
    trainer = Trainer(cfg, images, CPU)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, cfg, 1, 12, trainer.model, trainer.ema.module, trainer.process)
    assert load_checkpoint(path).step == 12
    state = torch.load(path, weights_only=True)
    state["config"]["data"]["unet"]["base_channels"] = 16
    del state["model"]["out.bias"]
    torch.save(state, path)
    with pytest.raises(StageInputError, match=r"does not fit the network .*missing: out.bias.*shape in file vs "
                                              r"expected: .*conv1.weight \(8, 8, 3, 3\) vs \(16, 16, 3, 3\)"):
        load_checkpoint(path)


def test_a_checkpoint_that_carries_code_or_is_truncated_is_refused(tmp_path):
    (tmp_path / "code.pt").write_bytes(b"")
    torch.save({"config": np.float64(1.0), "hook": Interrupted}, tmp_path / "code.pt")
    with pytest.raises(StageInputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "code.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(StageInputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
