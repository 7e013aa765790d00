"""Sampling at scale: one seed per image, the sample stage shared among processes, and resumed after a kill."""

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from project import TINY, copy_project, merge

from diffusionlab.chunks import ChunkFolder, map_chunks, prune
from diffusionlab.config.params import parse_params
from diffusionlab.distributed import World
from diffusionlab.families.registry import build_process
from diffusionlab.pipeline.classifier import ClassifierParams, classifier_stage
from diffusionlab.pipeline.reference import ReferenceParams, reference_stage
from diffusionlab.runtime.factory import build_network
from diffusionlab.sampling.generation import draw_images, generate
from diffusionlab.sampling.guidance import ConditionalModel
from diffusionlab.sampling.samplers import make_sampler
from diffusionlab.tensors import ImageGenerators, image_seed
from diffusionlab.validation import read_yaml, replace, validate

from processes import run

CPU = torch.device("cpu")
pytestmark = pytest.mark.timeout(900)  # the first test to use the tiny project runs its `dvc repro`


def test_each_row_of_a_per_image_draw_comes_from_its_own_generator():
    together = ImageGenerators([5, 7]).randn((2, 3, 4))
    assert torch.equal(together[0], ImageGenerators([5]).randn((1, 3, 4))[0])
    assert torch.equal(together[1], ImageGenerators([7]).randn((1, 3, 4))[0])
    assert not torch.equal(together[0], together[1])
    with pytest.raises(ValueError, match="3 rows from 2 per-image generators"):
        ImageGenerators([5, 7]).randn((3, 4))
    seeds = {image_seed(1, d, i) for d in range(3) for i in range(100)} | {image_seed(2, 0, i) for i in range(100)}
    assert len(seeds) == 400


@pytest.fixture(scope="module")
def model():
    raw = merge(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), TINY)
    cfg = parse_params(raw).run("digits", "ddpm")
    torch.manual_seed(0)
    process = build_process(cfg.model, CPU)
    return cfg, process, build_network(cfg, 1, process).eval()


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m_sde", "ddim"])
def test_an_image_depends_on_its_seed_draw_and_index_not_on_the_batch_or_the_order(model, sampler):
    cfg, process, net = model
    options = replace(cfg.sample, sampler=sampler, steps=6, eta=1.0)
    built = make_sampler(options, process, default_steps=cfg.model.timesteps)
    guided = ConditionalModel(net, process, 1, 2.0)
    labels = np.arange(24) % 10
    index = np.arange(24)

    def images(batch_size, order=index, seed=1, num_samples=12):
        return draw_images(guided, built, order, num_samples, (1, 8, 8), batch_size, CPU, seed, labels)

    whole = images(24)
    np.testing.assert_array_equal(images(5), whole)
    np.testing.assert_array_equal(images(7, index[::-1].copy())[::-1], whole)
    np.testing.assert_array_equal(generate(guided, built, 24, (1, 8, 8), 9, CPU, 1, labels=labels).images,
                                  images(24, num_samples=24))
    assert (images(24, seed=2) != whole).mean() > 0.5
    one_draw = images(24, num_samples=24)  # images 12..23 are of draw 0 now, not of draw 1
    np.testing.assert_array_equal(one_draw[:12], whole[:12])
    assert (one_draw[12:] != whole[12:]).mean() > 0.5
    assert (whole[:12] != whole[12:]).mean() > 0.5  # the second draw is not the first again


def test_chunks_already_in_the_folder_are_not_computed_again_and_a_changed_key_starts_afresh(tmp_path):
    calls = []

    def compute(rows):
        calls.append(rows.start)
        return np.arange(rows.start, rows.stop)[:, None] * np.ones((1, 2))

    folder = ChunkFolder(tmp_path, {"seed": 1})
    expected = np.arange(10)[:, None] * np.ones((1, 2))
    np.testing.assert_array_equal(map_chunks(10, 3, compute, World(), folder), expected)
    assert calls == [0, 3, 6, 9] and folder.done() == [0, 1, 2, 3]
    (folder.path / "000002.npy").unlink()  # as after a kill before the third chunk was written
    calls.clear()
    np.testing.assert_array_equal(map_chunks(10, 3, compute, World(), folder), expected)
    assert calls == [6]
    changed = ChunkFolder(tmp_path, {"seed": 2})
    assert changed.path != folder.path and changed.done() == []
    prune(tmp_path, [changed])
    assert not folder.path.exists()
    seen = []
    np.testing.assert_array_equal(map_chunks(10, 3, compute, World(), None, seen.append), expected)
    assert seen == [3, 3, 3, 1]


# The sample stage of one trained tiny model, run as a user runs it


STAGE = {"pipeline": {"datasets": ["digits"], "models": ["ddpm"]}, "train": {"device": "cpu"},
         "sample": {"num_samples": 12, "sweep_steps": [5], "guidance_sweep": [0.0]},
         "evaluate": {"ode_images": 0, "nll_images": 8}}
"""The sample and evaluate stages of the tiny project's ddpm, on fewer images."""
OUT = Path("outputs/sample/digits-ddpm")
FILES = ["samples.npy", "labels.npy", "sweep/steps_5.npy", "guidance/w_0.npy"]


def set_sample(dest: Path, **values) -> None:
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sample"].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def sample_command() -> list[str]:
    return [sys.executable, "stages/sample.py", "--dataset", "digits", "--model", "ddpm"]


def read_outputs(dest: Path) -> dict[str, bytes]:
    return {name: (dest / OUT / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def trained(tiny_project, tmp_path_factory):
    """A copy of the tiny project, its ddpm trained, and the files its uninterrupted sample stage writes at
    sample.batch_size 40."""
    dest = tmp_path_factory.mktemp("scale") / "project"
    env = copy_project(tiny_project[0], dest, STAGE)
    run(sample_command(), dest, env)
    assert (dest / "outputs/train/digits-ddpm/checkpoint.pt").is_file()
    return dest, env, read_outputs(dest)


def test_samples_are_the_same_for_any_batch_size_and_two_gloo_processes(trained):
    dest, env, reference = trained
    set_sample(dest, batch_size=7, nproc_per_node=2)  # against one process at batch size 40
    two = run(sample_command(), dest, env)
    assert "on 2 process(es)" in two.stderr
    assert read_outputs(dest) == reference
    assert not (dest / OUT / "partial").exists()
    set_sample(dest, batch_size=40, nproc_per_node=1)


def test_a_failing_process_stops_the_stage_with_a_clear_error_and_no_samples(trained, tmp_path):
    dest, env, _ = trained
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import diffusionlab.sampling.generation as g\n"
        "    def fail(*args, **kwargs):\n"
        "        raise RuntimeError('process 1 fails')\n"
        "    g.draw_batch = fail\n")
    (dest / OUT / "samples.npy").unlink()
    set_sample(dest, batch_size=8, nproc_per_node=2)
    try:
        failed = run(sample_command(), dest, {**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"},
                     check=False, timeout=300)
    finally:
        set_sample(dest, batch_size=40, nproc_per_node=1)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "process 1 fails" in failed.stderr
    assert "error: one of the 2 processes failed (sample.nproc_per_node = 2)" in failed.stderr
    assert not (dest / OUT / "samples.npy").exists()


def partial_batches(dest: Path) -> int:
    return sum(1 for _ in (dest / OUT / "partial").rglob("0*.npy"))


def test_a_sample_stage_killed_three_times_ends_with_the_files_of_an_uninterrupted_run(trained):
    """Each kill lands at a random moment after a random number of batches more than the last kill left."""
    dest, env, reference = trained
    set_sample(dest, batch_size=2)  # 12 batches per setting, 36 in all
    rng = random.Random(0)
    for target in sorted(rng.sample(range(2, 30), 3)):
        proc = subprocess.Popen(sample_command(), cwd=dest, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while partial_batches(dest) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.2))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill"
    left = partial_batches(dest)
    resumed = run(sample_command(), dest, env)
    assert f"{2 * left} images from finished batches" in resumed.stderr
    assert read_outputs(dest) == reference
    assert not (dest / OUT / "partial").exists()
    set_sample(dest, batch_size=40)


def set_evaluate(dest: Path, **values) -> None:
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["evaluate"].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_two_gloo_processes_extract_the_features_one_does_and_give_the_same_scores(trained):
    """Every score of the features is the same to the last digit; the bits/dim, computed by rank 0 alone, are
    the same to float32 rounding (one thread per process under torchrun sums in another order)."""
    dest, env, _ = trained
    with pytest.MonkeyPatch.context() as patch:  # the two stages it scores against, in this process
        patch.chdir(dest)
        raw = read_yaml("params.yaml")
        for stage, kind in ((classifier_stage, ClassifierParams), (reference_stage, ReferenceParams)):
            stage(validate(kind, raw), "digits")
    evaluate = [sys.executable, "stages/evaluate.py", "--dataset", "digits", "--model", "ddpm"]
    scores = {}
    for processes in (1, 2):
        set_evaluate(dest, batch_size=8, nproc_per_node=processes)  # 3 batches per setting
        out = run(evaluate, dest, env)
        assert f"on {processes} process(es)" in out.stderr
        folder = dest / "outputs/evaluate/digits-ddpm"
        scores[processes] = ((folder / "draws.csv").read_text(), json.loads((folder / "metrics.json").read_text()))
    (one_draws, one), (two_draws, two) = scores[1], scores[2]
    assert two_draws == one_draws
    bpd = {k for k in one if k.startswith("bpd")}
    assert {k: v for k, v in two.items() if k not in bpd} == {k: v for k, v in one.items() if k not in bpd}
    for key in bpd:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_the_paper_protocol_without_inception_weights_stops_before_sampling(trained):
    dest, env, _ = trained
    params = yaml.safe_load((dest / "params.yaml").read_text())
    before = copy.deepcopy(params)
    params["evaluate"].update(protocol="paper", inception_weights="weights/inception.pth")
    params["data"]["download_timeout"] = 1.0
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    written = (dest / OUT / "samples.npy").stat().st_mtime_ns
    try:
        out = run(sample_command(), dest, {**env, "HTTPS_PROXY": "http://127.0.0.1:9"}, check=False, timeout=120)
    finally:
        (dest / "params.yaml").write_text(yaml.safe_dump(before, sort_keys=False))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "weights/inception.pth" in out.stderr and "https://github.com/toshas/torch-fidelity" in out.stderr
    assert "network evaluations to make" not in out.stderr
    assert (dest / OUT / "samples.npy").stat().st_mtime_ns == written and not (dest / OUT / "partial").exists()


def test_a_setting_s_key_changes_with_what_its_images_depend_on_and_only_with_that(model):
    from diffusionlab.pipeline.sample import settings
    from diffusionlab.runtime.checkpoint import Checkpoint

    cfg, process, net = model
    ckpt = Checkpoint(cfg, 1, 0, net, net, process)
    sampler = make_sampler(cfg.sample, process, default_steps=cfg.model.timesteps)

    def keys(sample=None, identity=None):
        run = cfg if sample is None else cfg.model_copy(update={"sample": replace(cfg.sample, **sample)})
        return [s.key for s in settings(run, ckpt, sampler, identity or {"checkpoint": "a", "code": "b"})]

    base = keys()
    assert len(base) == 1 + len(cfg.sample.sweep_steps) + len(cfg.sample.guidance_sweep)
    assert keys({"grid_size": 4, "strip_samples": 2, "nproc_per_node": 2}) == base
    for changed in ({"seed": 2}, {"eta": 0.5}, {"num_samples": 41}, {"batch_size": 8}, {"guidance": 2.0}):
        assert keys(changed)[0] != base[0], changed
    assert keys(identity={"checkpoint": "c", "code": "b"})[0] != base[0]
    assert keys(identity={"checkpoint": "a", "code": "d"})[0] != base[0]
