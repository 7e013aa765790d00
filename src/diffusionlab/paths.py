"""Where each stage reads and writes, relative to the project root (mirrored in dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
OUTPUTS = Path("outputs")


def prepared(dataset: str) -> Path:
    return PREPARED / dataset


def classifier(dataset: str) -> Path:
    return OUTPUTS / "classifier" / dataset


def feature_network(dataset: str, name: str) -> Path:
    """Weights of feature network ``name`` (``classifier`` or ``resnet``) trained on ``dataset``."""
    return classifier(dataset) / f"{name}.pt"


def autoencoder(dataset: str) -> Path:
    """The latent autoencoder of ``dataset`` (stage autoencoder@<dataset>)."""
    return OUTPUTS / "autoencoder" / dataset


def latent_link(dataset: str, model: str) -> Path:
    """What train@<dataset>-<model> depends on of the autoencoder: for a pixel model a file that never changes,
    for a latent one the autoencoder's digest, so a new autoencoder re-trains the latent models only."""
    return autoencoder(dataset) / "models" / f"{model}.json"


def train(dataset: str, model: str) -> Path:
    return OUTPUTS / "train" / f"{dataset}-{model}"


def sample(dataset: str, model: str) -> Path:
    return OUTPUTS / "sample" / f"{dataset}-{model}"


def guidance_samples(dataset: str, model: str, w: float) -> Path:
    """The samples drawn at guidance scale ``w`` by the sample stage's guidance sweep."""
    return sample(dataset, model) / "guidance" / f"w_{w:g}.npy"


def evaluate(dataset: str, model: str) -> Path:
    return OUTPUTS / "evaluate" / f"{dataset}-{model}"


def restore(dataset: str, model: str) -> Path:
    return OUTPUTS / "restore" / f"{dataset}-{model}"


def reference(dataset: str) -> Path:
    return OUTPUTS / "reference" / dataset


def report() -> Path:
    return OUTPUTS / "report"
