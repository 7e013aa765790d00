"""The locked environment: torch, torchvision and torch-fidelity import and work together."""


def test_torchvision_operators_are_registered_with_this_torch():
    # A torchvision built for another torch fails here with "operator torchvision::nms does not exist".
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    assert keep.tolist() == [0]


def test_torch_fidelity_imports_and_sees_its_registry():
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert hasattr(torch_fidelity, "calculate_metrics")
    assert "inception-v3-compat" in FEATURE_EXTRACTORS_REGISTRY


def test_every_console_script_is_installed_and_names_a_main_that_exists():
    import importlib
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert "diffusionlab-generate" in scripts
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
        assert (Path(sys.executable).parent / name).is_file(), f"{name} is not installed: run make setup"
    shown = subprocess.run([str(Path(sys.executable).parent / "diffusionlab-generate"), "--help"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--prompt" in shown.stdout
