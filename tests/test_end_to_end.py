"""The real pipeline: `dvc repro` on tiny params in a copy of the project, checked through DVC and MLflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "pipeline": {"datasets": ["digits"], "models": ["ddpm", "vlb", "vdm"]},
    "datasets": {"digits": {"image_size": 8, "train_steps": 30, "batch_size": 16,
                            "unet": {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                     "attention_resolutions": [4], "dropout": 0.0}}},
    "models": {"ddpm": {"family": "ddpm", "schedule": "linear", "timesteps": 50, "class_conditional": True},
               "vlb": {"family": "vlb", "schedule": "cosine", "timesteps": 50, "loss": "vlb",
                       "importance_sampling": True},
               "vdm": {"family": "vdm", "gamma": "network", "timesteps": 50}},
    "train": {"log_every": 10, "warmup_steps": 5},
    "sample": {"steps": 10, "num_samples": 40, "batch_size": 40, "grid_size": 16, "strip_samples": 4,
               "strip_frames": 5, "sweep_steps": [5, 20], "guidance_sweep": [0.0, 2.0], "repaint_resample": 2},
    "classifier": {"steps": 40, "width": 8, "feature_dim": 8},
    "evaluate": {"min_classifier_accuracy": 0.0, "isc_splits": 2, "nll_images": 20, "nll_t_draws": 2,
                 "kid_subsets": 10, "reference_images": 200},
    "mlflow": {"system_metrics_interval": 1.0},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and key in base and key != "models" else value
    return out


def run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_project(dest: Path, overrides: dict) -> dict:
    """A git repository at ``dest`` holding the project with ``overrides`` merged into params.yaml;
    returns the environment to run its commands in."""
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("src", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, dest / ".dvc" / name)
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(dest / "src"), GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    run(["git", "init", "-q"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "tiny"], dest, env)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("project")
    env = make_project(dest, TINY)
    repro = run([str(BIN / "dvc"), "repro"], dest, env)
    return dest, env, repro


def test_repro_runs_every_stage_of_the_matrix(project):
    dest, _, repro = project
    for stage in ("prepare@digits", "classifier@digits", "reference@digits", "train@digits-ddpm",
                  "sample@digits-ddpm", "evaluate@digits-ddpm", "train@digits-vlb", "evaluate@digits-vlb",
                  "train@digits-vdm", "sample@digits-vdm", "evaluate@digits-vdm", "report"):
        assert f"Running stage '{stage}'" in repro.stdout, stage


def test_metrics_file_holds_every_metric_with_its_counts_and_floor_for_every_family(project):
    dest, env, _ = project
    floor = json.loads((dest / "outputs/reference/digits/floor.json").read_text())
    assert (floor["num_held_out"], floor["num_reference"]) == (40, 200)
    for model in ("ddpm", "vlb", "vdm"):
        metrics = json.loads((dest / f"outputs/evaluate/digits-{model}/metrics.json").read_text())
        scores = metrics["classifier"]
        assert scores["fid"] >= 0 and scores["isc_mean"] >= 1.0 and 0 <= scores["precision"] <= 1
        assert scores["fid_floor"] == floor["classifier"]["fid"] and scores["kid_subset_size"] == 40
        assert (scores["num_generated"], scores["num_reference"], metrics["nll_images"]) == (40, 200, 20)
        assert "classifier_accuracy" in scores and "inception" not in metrics
        sweep = (dest / f"outputs/evaluate/digits-{model}/fid_vs_steps.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in sweep] == ["steps", "5", "10", "20"]
        parts = metrics["bpd_prior"] + metrics["bpd_diffusion"] + metrics["bpd_reconstruction"]
        assert metrics["bpd"] == pytest.approx(parts) and 0 < metrics["bpd"] < float("inf") and metrics["bpd_stderr"] > 0
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], dest, env).stdout)
    flat = json.dumps(shown)
    assert '"fid"' in flat and '"test_accuracy"' in flat and '"final_loss"' in flat and '"fid_floor"' in flat


def test_report_compares_every_model_with_the_floor_in_markdown_and_self_contained_html(project):
    dest, _, _ = project
    md = (dest / "outputs/report/report.md").read_text()
    page = (dest / "outputs/report/report.html").read_text()
    for text in (md, page):
        assert "real held-out data" in text and all(m in text for m in ("ddpm", "vlb", "vdm"))
    assert page.count("data:image/png;base64,") == 2 + 3  # loss and FID-steps figures, three grids
    assert 'src="http' not in page and "<link" not in page


def test_sample_pngs_are_images_of_the_expected_layout(project):
    dest, _, _ = project
    grid = Image.open(dest / "outputs/sample/digits-vlb/grid.png")
    strip = Image.open(dest / "outputs/sample/digits-vlb/figures/denoising.png")
    # 8px images shown at 64px, 4x4 grid with 2px padding; strip: 4 rows of 5 frames
    assert grid.size == (4 * 66 + 2, 4 * 66 + 2)
    assert strip.size == (5 * 66 + 2, 4 * 66 + 2)
    conditional = Image.open(dest / "outputs/sample/digits-ddpm/grid.png")
    assert conditional.size == (10 * 66 + 2, 1 * 66 + 2)  # one column per class, whole rows only
    for model in ("ddpm", "vlb", "vdm"):
        figures = dest / f"outputs/sample/digits-{model}/figures"
        for name in ("forward.png", "reverse.png", "inpainting.png", "round_trip.png"):
            assert Image.open(figures / name).format == "PNG"
        gif = Image.open(figures / "denoising.gif")
        assert gif.format == "GIF" and gif.n_frames == 5


def test_a_class_conditional_model_is_scored_against_the_guidance_scale(project):
    dest, _, _ = project
    labels = np.load(dest / "outputs/sample/digits-ddpm/labels.npy")
    assert labels.tolist() == [i % 10 for i in range(40)]
    assert np.load(dest / "outputs/sample/digits-vlb/labels.npy").tolist() == [-1] * 40
    table = pd.read_csv(dest / "outputs/evaluate/digits-ddpm/guidance.csv")
    assert table.guidance.tolist() == [0.0, 1.0, 2.0]
    assert table.class_accuracy.between(0, 1).all() and table.fid.notna().all()
    metrics = json.loads((dest / "outputs/evaluate/digits-ddpm/metrics.json").read_text())
    assert metrics["class_accuracy"] == table.class_accuracy[1] and metrics["guidance"] == 1.0
    assert pd.read_csv(dest / "outputs/evaluate/digits-vlb/guidance.csv").empty


def mlflow_runs(dest, env):
    script = f"""
import json, mlflow
from mlflow import MlflowClient
mlflow.set_tracking_uri("sqlite:///{dest}/mlflow.db")
client = MlflowClient()
exp = client.get_experiment_by_name("diffusionlab")
out = []
for r in client.search_runs([exp.experiment_id]):
    out.append({{"name": r.data.tags["mlflow.runName"], "params": r.data.params, "metrics": r.data.metrics,
                 "tags": r.data.tags, "loss_steps": len(client.get_metric_history(r.info.run_id, "loss")),
                 "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id))
                              + sorted(a.path for a in client.list_artifacts(r.info.run_id, "samples"))}})
print(json.dumps(out))
"""
    return json.loads(run([sys.executable, "-c", script], dest, env).stdout.strip().splitlines()[-1])


def test_one_mlflow_run_per_combination_holds_params_metrics_and_artifacts(project):
    dest, env, _ = project
    runs = mlflow_runs(dest, env)
    assert sorted(r["name"] for r in runs) == ["digits-ddpm", "digits-vdm", "digits-vlb"]
    r = next(r for r in runs if r["name"] == "digits-ddpm")
    assert r["params"]["model.schedule"] == "linear" and r["params"]["data.train_steps"] == "30"
    assert r["params"]["data.unet.channel_mult"] == "[1, 2]"
    assert {"loss", "mse", "classifier.fid", "classifier.isc_mean", "classifier.kid_mean", "classifier.precision",
            "classifier.fid_floor", "sample_seconds", "bpd"} <= set(r["metrics"])
    vdm = next(r for r in runs if r["name"] == "digits-vdm")
    assert {"gamma_0", "gamma_1", "prior", "diffusion", "reconstruction", "bpd"} <= set(vdm["metrics"])
    vlb = next(r for r in runs if r["name"] == "digits-vlb")
    assert {"mse", "vb"} <= set(vlb["metrics"]) and vlb["params"]["model.importance_sampling"] == "True"
    assert r["loss_steps"] == 3
    assert r["tags"]["device"] == "cpu" and r["tags"]["sampler"] == "ddpm"
    assert {"checkpoint", "loss.csv", "samples/grid.png", "samples/denoising.png", "samples/denoising.gif",
            "samples/forward.png", "samples/reverse.png", "samples/inpainting.png",
            "samples/round_trip.png"} <= set(r["artifacts"])
    assert "class_accuracy" in r["metrics"]


def test_changing_one_models_params_invalidates_only_that_models_stages(project):
    dest, env, _ = project
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], dest, env).stdout or "{}")
    assert status == {}, "a second run should have nothing to do"
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["models"]["vlb"]["timesteps"] = 40
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(run([str(BIN / "dvc"), "status", "--json"], dest, env).stdout))
    finally:
        params["models"]["vlb"]["timesteps"] = 50
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed == {"train@digits-vlb"}  # downstream stages follow once its outputs change


def test_a_sampling_change_reruns_sampling_into_a_new_mlflow_run(project):
    """Runs last: it changes the project. The first run keeps its results; the new one points back to it."""
    dest, env, _ = project
    before = {r["name"]: r for r in mlflow_runs(dest, env)}
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sample"]["steps"] = 5
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = run([str(BIN / "dvc"), "repro"], dest, env)
    assert "Running stage 'train@" not in repro.stdout and "Running stage 'sample@digits-ddpm'" in repro.stdout
    runs = mlflow_runs(dest, env)
    assert len(runs) == 6
    old = next(r for r in runs if r["name"] == "digits-ddpm" and "continues_run" not in r["tags"])
    new = next(r for r in runs if r["name"] == "digits-ddpm" and "continues_run" in r["tags"])
    assert old["metrics"]["classifier.fid"] == before["digits-ddpm"]["metrics"]["classifier.fid"]
    assert old["params"]["sample.steps"] == "10" and new["params"]["sample.steps"] == "5"
    assert {"classifier.fid", "sample_seconds"} <= set(new["metrics"]) and new["tags"]["sampling_steps"] == "5"
