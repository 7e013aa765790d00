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
