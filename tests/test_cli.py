"""Stage entry points: bad input stops a stage at once with a message, not a traceback."""

from pathlib import Path

import pytest
import torch
import yaml

from diffusionlab.pipeline.cli import FINISHED_FORMAT, FINISHED_LINE, peak_memory, run_stage
from diffusionlab.pipeline.prepare import prepare_stage
from diffusionlab.pipeline.train import train_stage
from diffusionlab.timeline import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]


def write_params(folder: Path, **section_updates) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in section_updates.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_misspelt_key_stops_the_stage_with_a_suggestion(tmp_cwd, capsys):
    write_params(tmp_cwd, train__lrr=0.1)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(train_stage, with_model=True, argv=["--dataset", "digits", "--model", "ddpm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key train.lrr in params.yaml; did you mean train.lr?" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("updates, message", [
    ({"train__lrr": 0.1}, "unknown key train.lrr in params.yaml; did you mean train.lr?"),
    ({"train__lr": "fast"}, "train.lr must be a number"),
    ({"sample__steps": 5000}, "sample.steps is 5000 but models.ddpm.timesteps is 1000"),
    ({"train__nproc_per_node": 3}, "datasets.digits.batch_size 64 does not divide among train.nproc_per_node = 3"),
    ({"evaluate__features": []}, "evaluate.features is empty"),
])
def test_bad_params_stop_every_stage_before_work_and_keep_earlier_outputs(tmp_cwd, capsys, updates, message):
    write_params(tmp_cwd, **updates)
    keep = tmp_cwd / "outputs" / "train" / "digits-ddpm" / "checkpoint.pt"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"earlier result")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(train_stage, with_model=True, argv=["--dataset", "digits", "--model", "ddpm"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert keep.read_bytes() == b"earlier result"


def test_missing_inputs_name_the_stage_to_run_and_keep_existing_files(tmp_cwd, capsys):
    write_params(tmp_cwd)
    keep = tmp_cwd / "outputs" / "train" / "digits-ddpm" / "loss.csv"
    keep.parent.mkdir(parents=True)
    keep.write_text("step,loss\n")
    with pytest.raises(SystemExit):
        run_stage(train_stage, with_model=True, argv=["--dataset", "digits", "--model", "ddpm"])
    assert "holds no prepared dataset; run its prepare stage first" in capsys.readouterr().err
    assert keep.read_text() == "step,loss\n"


def test_unknown_dataset_is_refused(tmp_cwd, capsys):
    write_params(tmp_cwd)
    with pytest.raises(SystemExit):
        run_stage(prepare_stage, with_model=False, argv=["--dataset", "imagenet"])
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err


def test_prepare_stage_writes_the_prepared_form_and_says_its_time_and_peak_memory(tmp_cwd, capsys):
    write_params(tmp_cwd)
    run_stage(prepare_stage, with_model=False, argv=["--dataset", "digits"])
    err = capsys.readouterr().err
    card = yaml.safe_load((tmp_cwd / "data/prepared/digits/card.json").read_text())
    assert (card["train_size"], card["test_size"], card["image_size"], card["channels"]) == (1497, 300, 16, 1)
    line = FINISHED_LINE.search(err)
    own = peak_rss_mib()
    assert line and line[1] == "prepare@digits" and float(line[2]) >= 0, err
    assert own is None or 10 < int(line[3]) <= own + 1, f"the peak of this process ({own:.0f} MiB): {err}"
    assert line[4] is None, "no GPU peak where CUDA never ran"


def test_the_closing_line_adds_the_gpu_peak_once_cuda_ran(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    line = FINISHED_LINE.search("diffusionlab: " + FINISHED_FORMAT % ("train@cifar10-ddpm", 61.0, peak_memory()))
    assert line and line[4] == "3072", line


@pytest.mark.parametrize("broken, where", [
    ("pipeline:\n  datasets: [digits\n  models: [ddpm]\n", "line 3, column 9"),
    ("train:\n\tlr: 0.1\n", "line 2, column 1"),
    ("train: {lr: 0.1\n", "line 2, column 1"),
])
def test_params_that_are_not_yaml_stop_with_the_file_line_and_column_and_keep_outputs(tmp_cwd, capsys, broken,
                                                                                       where):
    (tmp_cwd / "params.yaml").write_text(broken)
    keep = tmp_cwd / "outputs" / "train" / "digits-ddpm" / "checkpoint.pt"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"earlier result")
    with pytest.raises(SystemExit) as exit_info:
        run_stage(train_stage, with_model=True, argv=["--dataset", "digits", "--model", "ddpm"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"error: params.yaml is not valid YAML at {where}: ") and err.count("\n") == 1, err
    assert keep.read_bytes() == b"earlier result" and sorted(p.name for p in tmp_cwd.iterdir()) == ["outputs",
                                                                                                  "params.yaml"]


def test_an_empty_or_non_mapping_params_file_names_what_is_wrong(tmp_cwd, capsys):
    for text, message in (("", "has no datasets.digits block"),
                          ("- 1\n- 2\n", "params.yaml must be a mapping of keys to values")):
        (tmp_cwd / "params.yaml").write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            run_stage(train_stage, with_model=True, argv=["--dataset", "digits", "--model", "ddpm"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
