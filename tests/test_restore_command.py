"""The restoration solvers on every family's real network, the restore params' checks, and the restore command on
a folder of PNGs."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusionlab.config.params import parse_params
from diffusionlab.errors import ConfigError
from diffusionlab.restore import main
from diffusionlab.runtime.checkpoint import save_checkpoint
from diffusionlab.runtime.factory import build_network, build_process
from diffusionlab.sampling import operators as ops
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.sampling.restoration import Problem, SolverOptions, solve
from diffusionlab.tensors import ImageGenerators

from test_guidance import params_raw
from test_training import MODELS, ROOT, run_config

SOLVER_STEPS = {"ddrm": 4, "ddnm": 4, "pigdm": 4, "dps": 4, "repaint": 4}


def untrained(cfg, channels=1):
    process = build_process(cfg)
    torch.manual_seed(0)
    net = build_network(cfg, channels, process)
    for p in net.parameters():  # an untrained but non-trivial network
        torch.nn.init.normal_(p, std=0.05)
    return net.eval(), process


@pytest.mark.parametrize("family", ["ddpm", "vlb", "vdm", "flow"])
def test_every_solver_restores_with_every_family(family):
    net, process = untrained(run_config(family))
    model = ConditionalModel(net, process, 1)
    truth = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = ops.box_mask((8, 8), 0.5)
    for op in (ops.super_resolution((1, 8, 8), 4), ops.MaskOperator(mask, 1)):
        y = op.A(truth)
        for solver in SOLVER_STEPS:
            if solver == "repaint" and not isinstance(op, ops.MaskOperator):
                continue
            out = solve(model.denoiser(), process, SolverOptions(solver=solver, steps=SOLVER_STEPS[solver]),
                        Problem(op, y, 0.0), ImageGenerators([1, 2, 3]))
            assert out.shape == truth.shape and out.isfinite().all(), (family, solver)
            if solver == "repaint":
                assert torch.equal(out * mask, truth * mask)  # RePaint keeps the known pixels exactly
            if solver in ("ddrm", "ddnm"):
                assert op.consistency(out, y).max() < 1e-5, (family, solver)


def params_with(**restore):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["restore"].update(restore)
    return raw


@pytest.mark.parametrize("restore,message", [
    ({"sigma_y": -0.1}, "restore.sigma_y must be >= 0, got -0.1"),
    ({"dps_step": 0}, "restore.dps_step must be > 0, got 0"),
    ({"tasks": ["sr4"], "solvers": ["repaint"]}, "restore.solvers has repaint, which restores masked pixels only"),
    ({"tasks": ["denoise"], "solvers": ["ddrm"], "sigma_y_for": {}}, "restore.tasks has denoise, whose measurement is the image itself at sigma_y 0"),
    ({"tasks": ["sr4", "sr4"]}, "restore.tasks lists a task twice"),
    ({"tasks": ["blur"], "solvers": ["ddrm"], "blur_width": 6.0}, "restore.blur_width 6 gives a kernel of radius 18, which cannot reflect"),
    ({"tasks": ["box"], "models": ["ddpm", "flow"]}, "restore.models lists 'flow', which pipeline.models"),
    ({"tasks": ["box"], "models": ["ddpm", "ddpm"]}, "restore.models lists a model twice"),
])
def test_bad_restore_params_are_one_line_naming_the_key(restore, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_params(params_with(**restore))


def test_a_latent_model_cannot_restore_and_models_to_restore_with_need_a_task_only_to_be_checked():
    raw = params_with(tasks=["box"], models=["vdm_latent"])
    raw["pipeline"]["models"] = ["vdm", "vdm_latent"]
    with pytest.raises(ConfigError, match="restore.models lists 'vdm_latent', a latent model: the solvers measure and "
                                          "restore pixels"):
        parse_params(raw)
    raw["restore"]["tasks"] = []  # no task: no restore stage, whatever the models
    assert parse_params(raw).restore.models == ("vdm_latent",)


def test_a_factor_that_does_not_divide_the_image_size_is_refused_for_the_dataset():
    raw = params_with(tasks=["sr4"], solvers=["ddrm"])
    raw["datasets"]["digits"]["image_size"] = 10
    raw["datasets"]["digits"]["unet"]["channel_mult"] = [1, 2]
    raw["datasets"]["digits"]["unet"]["attention_resolutions"] = [5]
    with pytest.raises(ConfigError, match="restore.tasks has sr4, whose factor 4 does not divide the image size of "
                                          "datasets.digits"):
        parse_params(raw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = parse_params(params_raw(class_conditional=True)).run("digits", "ddpm")
    net, process = untrained(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, cfg, 1, 0, net, net, process)
    return path


def write_pngs(folder, count=3, size=8, mode="L"):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(folder / f"digit{i}.png")
    return folder


def test_the_command_restores_a_folder_of_pngs_and_writes_the_degraded_input_beside(checkpoint, tmp_path, capsys):
    folder = write_pngs(tmp_path / "mine")
    main([str(checkpoint), "--input", str(folder), "--task", "box", "--solver", "ddnm", "--steps", "3",
          "-o", str(tmp_path / "out"), "--class", "3"])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"digit{i}_{kind}.png" for i in range(3) for kind in ("degraded", "restored")]
    truth = np.asarray(Image.open(folder / "digit1.png"))
    restored = np.asarray(Image.open(tmp_path / "out" / "digit1_restored.png"))
    mask = ops.box_mask((8, 8), 0.5).numpy().astype(bool)
    assert restored.shape == (8, 8) and np.abs(restored[mask].astype(int) - truth[mask]).max() <= 1  # A x = y kept
    assert "3 network evaluations each" in capsys.readouterr().out


@pytest.mark.parametrize("make,args,message", [
    (lambda d: write_pngs(d, size=16), [], "is 16x16 pixels, but the model takes 8x8"),
    (lambda d: write_pngs(d, mode="RGB"), [], "is colour (3 channels), but the model takes 1-channel images of 8x8"),
    (lambda d: write_pngs(d), ["--task", "sr2", "--solver", "repaint"], "--solver repaint restores masked pixels only"),
    (lambda d: write_pngs(d), ["--dps-step", "0"], "dps_step must be > 0"),
    (lambda d: write_pngs(d), ["--sigma-y", "-1"], "sigma_y must be >= 0"),
    (lambda d: write_pngs(d), ["--class", "12"], "--class 12: the model knows classes 0..9"),
])
def test_bad_input_to_the_command_fails_before_any_work_and_writes_nothing(checkpoint, tmp_path, capsys, make, args,
                                                                            message):
    folder = make(tmp_path / "mine")
    base = {"--task": "box", "--solver": "ddrm"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = [str(checkpoint), "--input", str(folder), "-o", str(tmp_path / "out")] + [x for kv in base.items() for x in kv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_models_listed_in_test_training_cover_every_family():
    from diffusionlab.families.registry import BUILDERS
    assert {m["family"] for m in MODELS.values()} == set(BUILDERS)
