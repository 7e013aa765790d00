"""The generate command: images and a grid from a checkpoint file or an MLflow URI, with clear errors."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.config.params import parse_params
from diffusionlab.generate import main
from diffusionlab.runtime.checkpoint import save_checkpoint
from diffusionlab.runtime.factory import build_network, build_process

from test_guidance import params_raw


def write_checkpoint(path, **model):
    cfg = parse_params(params_raw(**model)).run("digits", "ddpm")
    process = build_process(cfg)
    torch.manual_seed(0)
    net = build_network(cfg, 1, process)
    for p in net.parameters():  # an untrained but non-trivial network
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(path, cfg, 1, 0, net, net, process)
    return path


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", class_conditional=True)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")


def test_generate_writes_the_images_of_the_asked_classes_and_a_grid_deterministically(conditional, tmp_path):
    for out in ("a", "b"):
        main([str(conditional), "-n", "6", "--class", "7", "--class", "1", "--steps", "5", "--guidance", "2",
              "-o", str(tmp_path / out), "--batch-size", "4"])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["000000_class7.png", "000001_class1.png", "000002_class7.png", "000003_class1.png",
                     "000004_class7.png", "000005_class1.png", "grid.png"]
    for name in names:
        a, b = np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name))
        assert np.array_equal(a, b)
    assert np.asarray(Image.open(tmp_path / "a" / names[0])).shape == (8, 8)


@pytest.mark.parametrize("args,message", [
    (["--class", "10"], "class 10 is out of range: this model knows classes 0..9"),
    (["--steps", "51"], "51 steps is outside 1..50"),
    (["--guidance", "-1"], "guidance scale must be >= 0"),
])
def test_bad_settings_fail_before_sampling_and_write_nothing(conditional, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(conditional), "-o", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_class_for_an_unconditional_model_a_missing_checkpoint_and_an_existing_folder_are_refused(
        unconditional, tmp_path, capsys):
    cases = [([str(unconditional), "--class", "3"], "is unconditional"),
             ([str(tmp_path / "nothing.pt")], "checkpoint " + str(tmp_path / "nothing.pt") + " not found")]
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("keep me")
    cases.append(([str(unconditional), "-o", str(kept)], "already exists and is not empty"))
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(args if "-o" in args else [*args, "-o", str(tmp_path / "new")])
        assert message in capsys.readouterr().err
    assert [p.name for p in kept.iterdir()] == ["mine.txt"] and not (tmp_path / "new").exists()


def test_generate_loads_the_checkpoint_from_an_mlflow_run(unconditional, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("generate-test")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(unconditional), artifact_path="checkpoint")
    main([f"runs:/{run.info.run_id}/checkpoint", "-n", "3", "--steps", "4", "--sampler", "dpmpp_2m",
          "-o", str(tmp_path / "out"), "--tracking-uri", uri])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                                  "grid.png"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A text-conditioned checkpoint: an untrained network and a tiny text encoder trained for a few steps."""
    from diffusionlab.runtime.text_encoding import train_text_encoder

    raw = params_raw(text_conditional=True)
    raw["text_encoder"] = {"context_length": 6, "width": 8, "depth": 1, "num_heads": 2, "image_channels": 8,
                           "embed_dim": 8, "steps": 2, "batch_size": 4}
    cfg = parse_params(raw).run("digits", "ddpm")
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 8, 8), dtype=np.uint8)
    encoder = train_text_encoder(cfg.text_encoder, images, [["a 7", "a thick 7"], ["a 1"]] * 4,
                                 prompts=["a 1", "a 7"])
    process = build_process(cfg)
    torch.manual_seed(0)
    net = build_network(cfg, 1, process)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    net.set_null_text(encoder.condition([""])[0])
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, cfg, 1, 0, net, net, process, text=encoder)
    return path


def test_generate_draws_prompts_names_files_by_prompt_and_lists_them(text_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a 1\n\n")
    main([str(text_model), "-n", "4", "--prompt", "a thick 7", "--prompts-file", str(prompts), "--steps", "3",
          "--guidance", "2", "-o", str(tmp_path / "out")])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["000000_prompt0.png", "000001_prompt1.png", "000002_prompt0.png", "000003_prompt1.png",
                     "grid.png", "prompts.txt"]
    assert (tmp_path / "out" / "prompts.txt").read_text() == "0\ta thick 7\n1\ta 1\n"
    main([str(text_model), "-n", "2", "--steps", "2", "-o", str(tmp_path / "classes")])  # each class's prompt
    assert (tmp_path / "classes" / "prompts.txt").read_text() == "0\ta 1\n1\ta 7\n"


def test_a_prompt_to_a_class_model_and_a_class_to_a_text_model_are_one_line_before_sampling(
        conditional, text_model, tmp_path, capsys):
    for model, args, message in ((conditional, ["--prompt", "a 7"], "not text-conditioned .*ask for classes"),
                                 (text_model, ["--class", "7"], "text-conditioned: give it prompts")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(model), "-n", "2", *args, "-o", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "x").exists()
