"""The real pipeline: the tiny project's `dvc repro` (tests/project.py, run once per session), checked through
DVC and MLflow; the tests that change the project work on copies of it."""

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import requests
import yaml
from PIL import Image
from project import STAGES, TINY, copy_project, make_project, ran_stages, read_params, shell, write_params

from processes import command_line, kill_group, process_tree, project_processes, run, stop

pytestmark = pytest.mark.timeout(900)  # the first test to use the tiny project runs its `dvc repro`


def test_repro_runs_every_stage_of_the_matrix_and_none_that_would_do_nothing(tiny_project):
    dest, _, repro = tiny_project
    assert sorted(ran_stages(repro.stdout)) == sorted(STAGES)  # restore.models is [ddpm]; no latent model, so no autoencoder to train


def test_a_misspelt_key_in_a_model_block_stops_dvc_repro_at_its_first_stage_before_any_data(tmp_path):
    """No stage before train reads the model blocks: the check stage, which depends on the whole params file, runs
    first and stops the run with one line naming the key."""
    models = {**TINY["models"], "vlb": {**TINY["models"]["vlb"], "timestpes": 40}}
    env = make_project(tmp_path, {**TINY, "models": models})
    repro = shell("dvc repro", tmp_path, env, check=False)
    assert repro.returncode != 0 and ran_stages(repro.stdout) == ["check"], repro.stdout
    errors = [line for line in (repro.stdout + repro.stderr).splitlines() if line.startswith("error: ")]
    assert errors == ["error: unknown key models.vlb.timestpes in params.yaml; did you mean models.vlb.timesteps?"]
    assert not (tmp_path / "data/prepared").exists() and not (tmp_path / "outputs/check").exists()


def test_metrics_file_holds_every_metric_with_its_counts_and_floor_for_every_family(tiny_project):
    dest, env, _ = tiny_project
    floor = json.loads((dest / "outputs/reference/digits/floor.json").read_text())
    assert (floor["num_held_out"], floor["num_reference"]) == (40, 200)
    for model in ("ddpm", "vlb", "vdm"):
        metrics = json.loads((dest / f"outputs/evaluate/digits-{model}/metrics.json").read_text())
        for backend in ("classifier", "resnet"):
            scores = metrics[backend]
            assert scores["fid"] >= 0 and scores["isc"] >= 1.0 and 0 <= scores["precision"] <= 1
            assert scores["fid_std"] > 0 and "fid_inf" in scores and "isc_inf_std" in scores
            assert scores["draws"] == 2 and 0 <= scores["fid_vs_floor_p"] <= 1
            assert scores["fid_floor"] == floor[backend]["fid"] and scores["fid_floor_std"] == floor[backend]["fid_std"]
            assert "classifier_accuracy" in scores
        assert (metrics["num_generated"], metrics["draws"], metrics["num_reference"], metrics["nll_images"]) == (
            40, 2, 200, 20)
        assert "inception" not in metrics
        draws = pd.read_csv(dest / f"outputs/evaluate/digits-{model}/draws.csv")
        main = draws[(draws.steps == 10) & (draws.backend == "classifier")]
        assert set(main.draw) == {0, 1} and main.fid.notna().all()
        sweep = (dest / f"outputs/evaluate/digits-{model}/fid_vs_steps.csv").read_text().splitlines()
        assert sweep[0] == "steps,fid,fid_std" and [line.split(",")[0] for line in sweep] == ["steps", "5", "10", "20"]
        parts = metrics["bpd_prior"] + metrics["bpd_diffusion"] + metrics["bpd_reconstruction"]
        assert metrics["bpd"] == pytest.approx(parts) and 0 < metrics["bpd"] < float("inf") and metrics["bpd_stderr"] > 0
    shown = json.loads(shell("dvc metrics show --json", dest, env).stdout)
    flat = json.dumps(shown)
    assert '"fid"' in flat and '"test_accuracy"' in flat and '"final_loss"' in flat and '"fid_floor"' in flat
    assert '"fid_std"' in flat and '"fid_inf"' in flat and '"spread": "draws"' in flat


def test_report_compares_every_model_with_the_floor_in_markdown_and_self_contained_html(tiny_project):
    dest, _, _ = tiny_project
    md = (dest / "outputs/report/report.md").read_text()
    page = (dest / "outputs/report/report.html").read_text()
    for text in (md, page):
        assert "real held-out data" in text and all(m in text for m in ("ddpm", "vlb", "vdm"))
        assert all(h in text for h in ("FID vs best", "FID vs floor", "FID_inf", "IS_inf", "draws × images", " ± "))
        assert "unconditional (w=0)" in text and "conditional, w=1" in text and "2 × 40" in text
        assert "t-test over the draws" in text and "resnet" in text
    assert md.index("## Summary") < md.index("vs best (resnet)") < md.index("## digits (budget default): samples") < md.index(
        "FID vs best")  # the summary leads, then the grids, then the full table
    # loss, FID-steps and guidance figures, three grids, a restoration figure per task of the one restoring model
    assert page.count("data:image/png;base64,") == 3 + 3 + 2
    for text in (md, page):
        assert "Restoration with each model as the prior" in text and "FID (classifier) vs pinv" in text
        assert "digits-ddpm (unconditional branch, w = 0)" in text and "repaint" in text
    assert 'src="http' not in page and "<link" not in page


def test_sample_pngs_are_images_of_the_expected_layout(tiny_project):
    dest, _, _ = tiny_project
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


def test_a_class_conditional_model_is_scored_against_the_guidance_scale(tiny_project):
    dest, _, _ = tiny_project
    labels = np.load(dest / "outputs/sample/digits-ddpm/labels.npy")
    assert labels.tolist() == [i % 10 for i in range(40)] * 2  # each draw asks for every class in turn
    assert np.load(dest / "outputs/sample/digits-vlb/labels.npy").tolist() == [-1] * 80
    table = pd.read_csv(dest / "outputs/evaluate/digits-ddpm/guidance.csv")
    assert table.guidance.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0] and table.backend.tolist()[:2] == ["classifier", "resnet"]
    assert table.class_accuracy.between(0, 1).all() and table.fid.notna().all() and table.fid_std.notna().all()
    metrics = json.loads((dest / "outputs/evaluate/digits-ddpm/metrics.json").read_text())
    assert metrics["class_accuracy"] == pytest.approx(table.class_accuracy[2]) and metrics["guidance"] == 1.0
    assert metrics["task"] == "conditional, w=1"
    assert metrics["unconditional"]["resnet"]["fid"] == pytest.approx(table.fid[1])
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
    out.append({{"name": r.data.tags["mlflow.runName"], "id": r.info.run_id, "params": r.data.params, "metrics": r.data.metrics,
                 "tags": r.data.tags, "loss_steps": len(client.get_metric_history(r.info.run_id, "loss")),
                 "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id))
                              + sorted(a.path for a in client.list_artifacts(r.info.run_id, "samples"))}})
print(json.dumps(out))
"""
    return json.loads(run([sys.executable, "-c", script], dest, env).stdout.strip().splitlines()[-1])


def test_one_mlflow_run_per_combination_holds_params_metrics_and_artifacts(tiny_project):
    dest, env, _ = tiny_project
    runs = mlflow_runs(dest, env)
    assert sorted(r["name"] for r in runs) == ["digits-ddpm", "digits-vdm", "digits-vlb"]
    r = next(r for r in runs if r["name"] == "digits-ddpm")
    assert r["params"]["model.schedule"] == "linear" and r["params"]["data.train_steps"] == "30"
    assert r["params"]["data.unet.channel_mult"] == "[1, 2]"
    assert {"loss", "mse", "classifier.fid", "classifier.fid_std", "classifier.isc", "classifier.kid", "resnet.fid",
            "classifier.precision",
            "classifier.fid_floor", "sample_seconds", "bpd"} <= set(r["metrics"])
    vdm = next(r for r in runs if r["name"] == "digits-vdm")
    assert {"gamma_0", "gamma_1", "prior", "diffusion", "weighted", "elbo", "reconstruction", "bpd"} <= set(vdm["metrics"])
    assert vdm["params"]["model.weighting"] == "sigmoid" and vdm["params"]["model.prediction"] == "v"
    assert vdm["tags"]["recipe"].startswith("v, ") and vdm["tags"]["recipe"] != r["tags"]["recipe"]
    vlb = next(r for r in runs if r["name"] == "digits-vlb")
    assert {"mse", "vb"} <= set(vlb["metrics"]) and vlb["params"]["model.importance_sampling"] == "True"
    assert r["loss_steps"] == 3
    assert r["tags"]["device"] == "cpu" and r["tags"]["sampler"] == "ddpm"
    assert r["tags"]["train_precision"] == r["tags"]["sample_precision"] == "fp32"  # bf16: false in the tiny params
    assert {"checkpoint", "loss.csv", "loss.png", "params", "samples/grid.png", "samples/denoising.png",
            "samples/denoising.gif", "samples/forward.png", "samples/reverse.png", "samples/inpainting.png",
            "samples/round_trip.png"} <= set(r["artifacts"])
    assert {"class_accuracy", "lr", "grad_norm", "images_per_second", "train_images_per_second"} <= set(r["metrics"])
    commit = run(["git", "rev-parse", "HEAD"], dest, env).stdout.strip()
    for each in runs:
        assert each["tags"]["git_commit"] == commit and each["tags"]["git_dirty"] in ("true", "false")
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(each["metrics"])
        assert each["tags"]["dvc_experiment"] == "" and "continues_run" not in each["tags"]


def test_restore_scores_every_task_and_solver_over_draws_and_logs_to_the_models_run(tiny_project):
    dest, env, _ = tiny_project
    folder = dest / "outputs/evaluate/digits-ddpm/restore"
    table = pd.concat([pd.read_csv(folder / task / "summary.csv") for task in ("sr4", "box")])
    methods = {task: list(rows.method) for task, rows in table.groupby("task", sort=False)}
    assert methods == {"sr4": ["truth", "pinv", "ddrm", "ddnm", "pigdm", "dps"],
                       "box": ["truth", "pinv", "fill", "ddrm", "ddnm", "pigdm", "dps", "repaint"]}
    solvers = table[table.kind == "solver"]
    assert (solvers.draws == 2).all() and (solvers.images == 10).all() and solvers.psnr_std.notna().all()
    # three steps of one evaluation each; RePaint evaluates each step once per resampling (repaint_resample 2)
    assert dict(zip(solvers.method + "-" + solvers.task, solvers.evaluations)) == {
        **{f"{m}-{t}": 3 for m in ("ddrm", "ddnm", "pigdm", "dps") for t in ("sr4", "box")}, "repaint-box": 6}
    noiseless = solvers[solvers.method.isin(["ddrm", "ddnm"])]
    assert (noiseless.consistency < 1e-5).all()  # A x = y to float precision
    for column in ("fid_classifier", "fid_resnet", "class_accuracy", "ssim", "fid_classifier_vs_pinv_p",
                   "seconds_per_image"):
        assert column in table and table[column].notna().any(), column
    draws = np.load(folder / "box/restorations/ddrm.npy")
    assert draws.shape == (2, 10, 1, 8, 8) and draws.dtype == np.uint8 and not np.array_equal(draws[0], draws[1])
    assert (folder / "box/figure.png").is_file()
    assert json.loads((folder / "sr4/metrics.json").read_text())["methods"]["ddrm"]["psnr"] > 0
    r = next(r for r in mlflow_runs(dest, env) if r["name"] == "digits-ddpm")
    assert {"restore.box.ddrm.psnr", "restore.sr4.dps.fid_resnet", "restore.box.pinv.class_accuracy"} <= set(r["metrics"])
    params = read_params(dest)
    params["restore"]["dps_step"] = 0.5
    write_params(dest, params)
    try:
        changed = set(json.loads(shell("dvc status --json", dest, env).stdout))
    finally:
        params["restore"]["dps_step"] = 1.0
        write_params(dest, params)
    assert changed == {"check", "restore@digits-ddpm-sr4", "restore@digits-ddpm-box"}  # then the report


def stage_names(dest: Path, env: dict) -> set[str]:
    return set(shell("dvc stage list --name-only", dest, env).stdout.split())


def test_the_stages_that_exist_follow_the_restore_tasks_and_models_and_the_report_depends_on_them(tiny_project):
    """No restore stage without a task or a model to restore with, one per (model, task) otherwise; a latent model
    brings its own train, sample and evaluate stages and no other; the report's deps are met either way."""
    dest, env, _ = tiny_project
    original = read_params(dest)
    per_model = {f"{stage}@digits-{m}" for m in ("ddpm", "vlb", "vdm") for stage in ("train", "sample", "evaluate")}
    base = {"check", "prepare@digits", "text_encoder@digits", "classifier@digits", "reference@digits", "report"} | per_model
    cases = [({"tasks": []}, [], set()),
             ({"tasks": ["sr4"]}, ["flow_latent"], {"restore@digits-ddpm-sr4"} | {
                 f"{stage}@digits-flow_latent" for stage in ("train", "sample", "evaluate")})]
    try:
        for restore, extra, expected in cases:
            params = yaml.safe_load(yaml.safe_dump(original))
            params["restore"].update(restore)
            params["pipeline"]["models"] += extra
            write_params(dest, params)
            assert stage_names(dest, env) == base | expected, (restore, extra)
            status = json.loads(shell("dvc status --json", dest, env).stdout or "{}")
            stale = set(status) - {f"{stage}@digits-{m}" for m in extra for stage in ("train", "sample", "evaluate")}
            # the report's params changed (and the text encoder's, which reads pipeline.models; check reads them
            # all); no dep on a stage that is not there
            assert stale == {"check", "report"} | ({"text_encoder@digits"} if extra else set()), status
    finally:
        write_params(dest, original)
    assert json.loads(shell("dvc status --json", dest, env).stdout or "{}") == {}


def test_changing_one_models_params_invalidates_only_that_models_stages(tiny_project):
    dest, env, _ = tiny_project
    status = json.loads(shell("dvc status --json", dest, env).stdout or "{}")
    assert status == {}, "a second run should have nothing to do"
    params = read_params(dest)
    params["models"]["vlb"]["timesteps"] = 40
    write_params(dest, params)
    try:
        changed = set(json.loads(shell("dvc status --json", dest, env).stdout))
    finally:
        params["models"]["vlb"]["timesteps"] = 50
        write_params(dest, params)
    # downstream stages follow once its outputs change; the text encoder's stage reads every model block (is one
    # text-conditioned?), and its record for vlb stays as it is, so nothing else of vlb follows
    assert changed == {"check", "train@digits-vlb", "text_encoder@digits"}


def test_a_budget_change_reruns_the_training_of_that_dataset_and_not_its_data_or_feature_networks(tiny_project):
    dest, env, _ = tiny_project
    original = read_params(dest)
    params = copy.deepcopy(original)
    params["datasets"]["digits"]["budgets"] = {"smaller": {"train_steps": 3, "unet": {"base_channels": 8}}}
    write_params(dest, params)
    try:
        unselected = set(json.loads(shell("dvc status --json", dest, env).stdout or "{}"))
        params["datasets"]["digits"]["budget"] = "smaller"
        write_params(dest, params)
        selected = set(json.loads(shell("dvc status --json", dest, env).stdout or "{}"))
    finally:
        write_params(dest, original)
    trains = {s for s in STAGES if s.startswith("train@digits-")}
    assert trains and selected - {"check"} == trains == unselected - {"check"}  # downstream stages follow once the checkpoints change


def test_every_stage_ran_only_modules_its_dvc_deps_list(tiny_project):
    """The deps follow the imports a stage makes when it starts; what a stage loads while it runs must be
    among them too."""
    dest, _, _ = tiny_project
    stages = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]
    ran = [json.loads(line) for line in (dest.parent / "modules.jsonl").read_text().splitlines()]
    assert {r["stage"].split("@")[0] for r in ran} == set(stages)
    for record in ran:
        missing = set(record["modules"]) - set(stages[record["stage"].split("@")[0]]["deps"])
        assert not missing, f"{record['stage']} ran {sorted(missing)}, which dvc.yaml does not list"


def test_a_stage_loads_feature_scoring_and_mlflows_model_flavour_only_where_its_work_needs_them(tiny_project):
    """torch-fidelity (and with it torchvision) where features are scored, torchvision where sample grids are drawn;
    MLflow's pytorch flavour where the trained model is logged; torch._dynamo where an optimizer is built
    (torch.optim's constructor imports it) or torchvision is (its operators import it)."""
    dest, _, _ = tiny_project
    loaded = {}
    for line in (dest.parent / "modules.jsonl").read_text().splitlines():
        record = json.loads(line)
        loaded[record["stage"].split("@")[0]] = set(record["heavy"])
    scoring = {"torch_fidelity", "torchvision", "torch._dynamo"}
    assert loaded == {"check": set(), "prepare": set(), "text_encoder": set(), "classifier": {"torch._dynamo"}, "reference": scoring,
                      "train": {"torch._dynamo", "mlflow.pytorch"}, "sample": {"torchvision", "torch._dynamo"},
                      "evaluate": scoring,
                      "restore": scoring, "report": set()}


@pytest.mark.parametrize("module", ["sampling/samplers.py", "families/ddpm/samplers.py"])
def test_editing_a_sampler_makes_only_the_sample_and_restore_stages_stale(tiny_project, module):
    """A sampler's code, family-agnostic or a family's own, reaches sample (and, through its outputs, evaluate
    and report) and restore (RePaint steps with a one-step sampler), never the data, the feature networks, the
    reference statistics or training."""
    dest, env, _ = tiny_project
    sampler = dest / "src/diffusionlab" / module
    original = sampler.read_text()
    sampler.write_text(original + "\n# edited\n")
    try:
        stale = set(json.loads(shell("dvc status --json", dest, env).stdout or "{}"))
    finally:
        sampler.write_text(original)
    assert stale == {f"sample@digits-{model}" for model in ("ddpm", "vlb", "vdm")} | {
        "restore@digits-ddpm-sr4", "restore@digits-ddpm-box"}


def test_the_trained_model_is_logged_registered_and_its_best_version_samples_through_generate(tiny_project, tmp_path):
    """mlflow.pytorch.log_model in train; evaluate registers every model of the dataset and the alias best
    points at the lowest FID; `generate models:/...@best` samples from it."""
    dest, env, _ = tiny_project
    script = f"""
import json, mlflow
mlflow.set_tracking_uri("sqlite:///{dest}/mlflow.db")
client = mlflow.MlflowClient()
best = client.get_model_version_by_alias("diffusionlab-digits", "best")
versions = client.search_model_versions("name = 'diffusionlab-digits'")
model = mlflow.pytorch.load_model("models:/diffusionlab-digits@best")
print(json.dumps({{"best": best.tags, "versions": [v.tags for v in versions], "type": type(model).__name__,
                  "config": model.config.name, "shape": list(model.sample(2, steps=3).shape)}}))
"""
    found = json.loads(run([sys.executable, "-c", script], dest, env).stdout.strip().splitlines()[-1])
    fids = {m: json.loads((dest / f"outputs/evaluate/digits-{m}/metrics.json").read_text())["classifier"]["fid"]
            for m in ("ddpm", "vlb", "vdm")}
    assert sorted(v["model"] for v in found["versions"]) == ["ddpm", "vdm", "vlb"]
    best = min(fids, key=fids.get)
    assert found["best"]["model"] == best and float(found["best"]["fid"]) == fids[best]
    assert found["type"] == "DiffusionModel" and found["config"] == f"digits-{best}" and found["shape"] == [2, 1, 8, 8]
    out = tmp_path / "generated"
    shell(f"python -m diffusionlab.generate models:/diffusionlab-digits@best -n 3 --steps 3 -o {out}", dest, env)
    assert len(list(out.glob("0*.png"))) == 3 and (out / "grid.png").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tiny_project, tmp_path_factory):
    """`make ui`'s command on a free loopback port, serving the project's store; yields the server's
    address and the page the command tells the user to open."""
    dest, env, _ = tiny_project
    port = free_port()
    log_file = tmp_path_factory.mktemp("ui") / "ui.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "diffusionlab.ui", "--port", str(port)], cwd=dest, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the MLflow UI did not start:\n{log_file.read_text()[-3000:]}")
            time.sleep(1)
        printed = log_file.read_text().split(f"MLflow UI for sqlite:///{dest}/mlflow.db: ", 1)[1].split()[0]
        yield url, printed
    finally:
        stop(process_tree(proc.pid))  # the server's workers and job consumers too
        kill_group(proc.pid)
        proc.wait(timeout=60)


def ui_run(url: str, name: str) -> dict:
    api = f"{url}/api/2.0/mlflow"
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "diffusionlab"}).json()
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp["experiment"]["experiment_id"]],
                                                     "filter": f"attributes.run_name = '{name}'"}).json()["runs"]
    assert len(runs) == 1, f"{len(runs)} runs named {name}"
    return runs[0]


def test_the_mlflow_ui_serves_the_runs_metric_history_params_and_artifacts(ui):
    ui, _ = ui
    api = f"{ui}/api/2.0/mlflow"
    r = ui_run(ui, "digits-ddpm")
    run_id = r["info"]["run_id"]
    params = {p["key"]: p["value"] for p in r["data"]["params"]}
    assert params["model.family"] == "ddpm" and params["train.lr"] == "0.0004"
    for key in ("loss", "lr", "grad_norm", "images_per_second"):
        history = requests.get(f"{api}/metrics/get-history", params={"run_id": run_id, "metric_key": key}).json()
        assert [m["step"] for m in history["metrics"]] == [10, 20, 30], key
    files = {f["path"] for f in requests.get(f"{api}/artifacts/list", params={"run_id": run_id}).json()["files"]}
    assert {"checkpoint", "loss.csv", "loss.png", "params", "samples"} <= files
    png = requests.get(f"{ui}/get-artifact", params={"path": "samples/grid.png", "run_uuid": run_id})
    assert png.ok and png.content[:8] == b"\x89PNG\r\n\x1a\n"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(page: str, tmp_path: Path) -> str:
    """The DOM of ``page`` rendered in headless Chromium, after its scripts ran for 30 s of virtual time."""
    if CHROMIUM is None:
        if os.environ.get("DIFFUSIONLAB_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--window-size=1400,900"]
    return run([CHROMIUM, *flags, "--dump-dom", page], tmp_path, dict(os.environ), timeout=180).stdout


def test_the_run_page_renders_the_runs_name_and_fid_in_headless_chromium(ui, tmp_path):
    ui, _ = ui
    r = ui_run(ui, "digits-ddpm")
    fid = next(m["value"] for m in r["data"]["metrics"] if m["key"] == "classifier.fid")
    page = f"{ui}/#/experiments/{r['info']['experiment_id']}/runs/{r['info']['run_id']}"
    dom = rendered_dom(page, tmp_path)
    assert "digits-ddpm" in dom and "classifier.fid" in dom and repr(fid) in dom


def test_the_page_make_ui_prints_opens_on_the_runs_table(ui, tmp_path):
    """Not on MLflow 3's GenAI overview (traces, latency, token usage), which an experiment of training
    runs has no use for."""
    ui, printed = ui
    experiment = ui_run(ui, "digits-ddpm")["info"]["experiment_id"]
    assert printed == f"{ui}/#/experiments/{experiment}?workflowType=machine_learning"
    dom = rendered_dom(printed, tmp_path)
    assert all(f"digits-{m}" in dom for m in ("ddpm", "vlb", "vdm")) and "matching runs" in dom, dom[-3000:]
    assert "Detect Issues" not in dom and "Latency" not in dom
    tags = requests.get(f"{ui}/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment}).json()
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in tags["experiment"]["tags"]


def stage_folder(dest: Path, tmp_path: Path, **mlflow_params) -> Path:
    """A folder with the project's stages, params (with ``mlflow_params``) and prepared data, outside DVC."""
    folder = tmp_path / "stage"
    shutil.copytree(dest / "stages", folder / "stages")
    shutil.copytree(dest / "data/prepared", folder / "data/prepared")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["mlflow"].update(mlflow_params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def test_an_unreachable_tracking_server_stops_training_before_it_starts(tiny_project, tmp_path):
    dest, env, _ = tiny_project
    folder = stage_folder(dest, tmp_path, connect_timeout=2.0)
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run([sys.executable, "stages/train.py", "--dataset", "digits", "--model", "ddpm"], folder,
               {**env, "MLFLOW_TRACKING_URI": uri}, check=False)
    assert proc.returncode == 2 and time.monotonic() - start < 60
    assert f"MLflow tracking store {uri} is unreachable" in proc.stderr and "mlflow.required: false" in proc.stderr
    assert "Traceback" not in proc.stderr and not (folder / "outputs").exists()


def test_optional_tracking_trains_untracked_with_one_warning(tiny_project, tmp_path):
    dest, env, _ = tiny_project
    folder = stage_folder(dest, tmp_path, connect_timeout=2.0, required=False)
    proc = run([sys.executable, "stages/train.py", "--dataset", "digits", "--model", "ddpm"], folder,
               {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert proc.stderr.count("unreachable") == 1 and "running untracked" in proc.stderr
    out = folder / "outputs/train/digits-ddpm"
    assert {"checkpoint.pt", "loss.csv", "loss.png", "train.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "train.json").read_text())["recipe"].startswith("eps, linear schedule")
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] is None


def queue_status(dest, env) -> str:
    return shell("dvc queue status", dest, env).stdout


def queue_workers(dest: Path) -> list[psutil.Process]:
    """The queue's worker processes, by the pids their pid files name."""
    found = []
    for pid_file in (dest / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.pid"):
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            proc = psutil.Process(int(pid_file.read_text().strip()))
            if "exp queue-worker" in command_line(proc):
                found.append(proc)
    return found


def stop_queue(dest: Path, env: dict[str, str]) -> None:
    """As the README says: `dvc queue stop`, then kill by pid a worker still running (with -j above 1 a
    worker can miss the end of the queue and never exit, a DVC race)."""
    shell("dvc queue stop", dest, env, check=False, timeout=120)
    _, alive = psutil.wait_procs(queue_workers(dest), timeout=20)
    stop(alive)
    queue_parts = ("exp queue-worker", "exp exec-run", "queue start")
    stop([p for p in project_processes(dest) if any(part in command_line(p) for part in queue_parts)])


def test_queued_experiments_run_two_at_a_time_retrain_only_what_changed_and_log_to_the_projects_store(
        tiny_project, tmp_path):
    """`dvc queue start -j 2` on a model change and a sampling change, in a copy of the project with two of its
    models and no restoration: both log into its SQLite store at once, without "database is locked"; the sampling
    change restores the trained models from DVC's run cache and logs into new runs that point back to the runs it
    builds on, which keep their results; `dvc exp show` lists the metrics of both."""
    dest = tmp_path / "project"
    env = copy_project(tiny_project[0], dest, {"pipeline": {"models": ["ddpm", "vlb"]}, "restore": {"tasks": []}})
    before = {r["name"]: r for r in mlflow_runs(dest, env) if not r["tags"]["dvc_experiment"]}
    for name, change in (("t40", "-S models.ddpm.timesteps=40"), ("steps5", "-S sample.steps=5")):
        shell(f"dvc exp run --queue -n {name} {change}", dest, env)
    try:
        shell("dvc queue start -j 2", dest, env, timeout=120)
        deadline = time.monotonic() + 600
        while any(word in queue_status(dest, env) for word in ("Queued", "Running")):
            assert time.monotonic() < deadline, queue_status(dest, env)
            time.sleep(2)
        status = queue_status(dest, env)
    finally:
        stop_queue(dest, env)
    assert not queue_workers(dest), "a queue worker outlived `dvc queue stop` and the kill"
    logs = {name: shell(f"dvc queue logs {name}", dest, env, check=False).stdout for name in ("t40", "steps5")}
    assert status.count("Success") == 2, f"{status}\n{logs}"
    assert not any("database is locked" in text for text in logs.values())
    assert "Running stage 'train@" not in logs["steps5"] and "Running stage 'sample@digits-vlb'" in logs["steps5"]
    assert "Running stage 'train@digits-ddpm'" in logs["t40"] and "Running stage 'train@digits-vlb'" not in logs["t40"]
    shown = shell("dvc exp show --csv --only-changed", dest, env).stdout
    header, *rows = shown.splitlines()
    assert "models.ddpm.timesteps" in header and "sample.steps" in header
    assert all(m in header for m in ("classifier.fid", "classifier.fid_std", "resnet.fid", "fid_inf", "bpd"))
    assert {"t40", "steps5"} <= {row.split(",")[0] for row in rows}
    compared = shell("python -m diffusionlab.compare workspace steps5", dest, env).stdout
    assert "Welch's t-test" in compared and "| digits-vlb  | resnet" in compared
    assert compared.count("noise") >= 2 * 2 * 5  # every score of every model and backend has a verdict

    runs = mlflow_runs(dest, env)
    queued = {r["name"]: r for r in runs if r["tags"]["dvc_experiment"]}
    assert sorted(queued) == ["digits-ddpm-steps5", "digits-ddpm-t40", "digits-vlb-steps5"]
    t40 = queued["digits-ddpm-t40"]
    assert t40["params"]["model.timesteps"] == "40" and t40["loss_steps"] == 3 and t40["tags"]["git_dirty"] == "true"
    assert "continues_run" not in t40["tags"] and "classifier.fid" in t40["metrics"]
    for model in ("ddpm", "vlb"):
        new, old = queued[f"digits-{model}-steps5"], before[f"digits-{model}"]
        assert new["tags"]["continues_run"] == old["id"] and new["params"]["sample.steps"] == "5"
        assert {"classifier.fid", "sample_seconds"} <= set(new["metrics"]) and new["tags"]["sampling_steps"] == "5"
    after = {r["name"]: r for r in runs if not r["tags"]["dvc_experiment"]}
    assert {n: r["metrics"]["classifier.fid"] for n, r in after.items()} == {
        n: r["metrics"]["classifier.fid"] for n, r in before.items()}


def test_a_text_mmdit_flow_and_a_latent_transformer_added_to_the_pipeline_train_sample_and_evaluate_alone(
        tiny_project, tmp_path):
    """A text-conditioned flow on pixels with the MMDiT and a flow on its own autoencoder's latents with the
    transformer backbone, added to a copy of the project's pipeline, run their stages and the text encoder's alone;
    the text model draws each class's caption, one prompt per grid row, and is scored on the classes they name; the
    latent model's train stage trains its autoencoder, and re-uses it when the model's own params change."""
    dest = tmp_path / "project"
    env = copy_project(tiny_project[0], dest)
    params = read_params(dest)
    params["pipeline"]["models"] = [*params["pipeline"]["models"], "flow", "flow_latent"]
    write_params(dest, params)
    repro = shell("dvc repro evaluate@digits-flow evaluate@digits-flow_latent", dest, env)
    assert set(ran_stages(repro.stdout)) == {"check", "text_encoder@digits"} | {
        f"{stage}@digits-{m}" for m in ("flow", "flow_latent") for stage in ("train", "sample", "evaluate")}
    markers = {m: json.loads((dest / f"outputs/text_encoder/digits/models/{m}.json").read_text())["text_encoder"]
               for m in params["pipeline"]["models"]}
    assert markers["flow"] and markers["flow_latent"] == markers["flow"]
    assert not any(markers[m] for m in markers if m not in ("flow", "flow_latent"))
    assert json.loads((dest / "outputs/train/digits-flow/train.json").read_text())["text_encoder"]["digest"] == \
        markers["flow"]
    card = json.loads((dest / "outputs/sample/digits-flow/sample.json").read_text())
    assert card["sampler"] == "heun" and card["steps"] == 10
    assert card["text_conditional"] and card["prompts"] == [f"an {c}" if c == 8 else f"a {c}" for c in range(10)]
    asked = np.load(dest / "outputs/sample/digits-flow/labels.npy")
    assert asked.tolist() == [i % 10 for i in range(40)] * 2  # the class each prompt names, every draw alike
    assert (dest / "outputs/sample/digits-flow/figures/inpainting.png").is_file()
    metrics = json.loads((dest / "outputs/evaluate/digits-flow/metrics.json").read_text())
    assert "bpd" not in metrics and 0 < metrics["bpd_ode"] < 20 and metrics["bpd_ode_stderr"] > 0
    assert metrics["family"] == "flow" and metrics["classifier"]["fid"] >= 0 and "autoencoder" not in metrics
    assert 0 <= metrics["class_accuracy"] <= 1 and metrics["class_accuracy_std"] >= 0  # for the prompts' classes
    assert 0 <= metrics["clip_score"] <= 100 and metrics["clip_score_std"] >= 0
    # every word of every class drawn apart and scored for the attribute it asks, "thick 7" as never seen
    assert len(card["attribute_prompts"]) == 60 and card["attribute_prompts"][:2] == ["a thin 0", "a thin 1"]
    assert np.load(dest / "outputs/sample/digits-flow/attributes/samples.npy").shape == (120, 1, 8, 8)
    assert (dest / "outputs/sample/digits-flow/attributes/grid.png").is_file()
    adherence = metrics["attributes"]
    assert adherence["held_out"] == ["thick 7"] and adherence["images_per_draw"] == 60
    assert all(-1 <= adherence[f"{a}_r"] <= 1 and adherence[f"{a}_error"] >= 0 for a in ("thickness", "slant"))
    assert "thickness_gain_held_out" in adherence and "slant_gain_held_out" not in adherence
    assert -1 <= adherence["real"]["thickness_r"] <= 1 and adherence["real"]["slant_error"] >= 0  # the ceiling
    assert not list((dest / "outputs/sample/digits-ddpm/attributes").iterdir())  # a class model draws none

    out = dest / "outputs/train/digits-flow_latent"
    trained = json.loads((out / "train.json").read_text())["autoencoder"]
    assert trained["reused"] is False and trained["train_seconds"] > 0 and trained["latent_scale"] > 0
    samples = np.load(dest / "outputs/sample/digits-flow_latent/samples.npy")
    assert samples.shape == (80, 1, 8, 8) and samples.dtype == np.uint8  # decoded from 2 x 4 x 4 latents
    assert (dest / "outputs/sample/digits-flow_latent/figures/reconstructions.png").is_file()
    latent = json.loads((dest / "outputs/evaluate/digits-flow_latent/metrics.json").read_text())
    assert latent["classifier"]["fid"] >= 0 and "bpd_ode" not in latent and "latents" in latent["likelihood"]
    # a latent text model (the DiT with the pooled prompt) is scored on its decoded samples as a pixel one
    assert 0 <= latent["clip_score"] <= 100 and latent["attributes"]["thickness_error"] >= 0
    ae = latent["autoencoder"]
    assert (ae["factor"], ae["latent_channels"]) == (2, 2) and ae["psnr"] > 0 and 0 < ae["ssim"] <= 1
    assert ae["latent_scale"] == pytest.approx(trained["latent_scale"])
    assert ae["classifier"]["fid"] >= 0 and ae["resnet"]["fid_std"] >= 0 and ae["num_held_out"] == 300

    # a pixel model's change leaves the latent model as it is; the latent model's own change re-uses its autoencoder
    written = (out / "autoencoder.pt").read_bytes()
    params["models"]["flow"]["label_dropout"] = 0.25
    params["models"]["flow_latent"]["label_dropout"] = 0.25
    write_params(dest, params)
    again = shell("dvc repro train@digits-flow_latent", dest, env)
    assert "re-uses its autoencoder" in again.stderr + again.stdout
    assert json.loads((out / "train.json").read_text())["autoencoder"]["reused"] is True
    assert (out / "autoencoder.pt").read_bytes() == written
    status = shell("dvc status train@digits-flow_latent train@digits-flow", dest, env).stdout
    assert "train@digits-flow:" in status and "train@digits-flow_latent" not in status, status
