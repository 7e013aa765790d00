"""Where each stage reads and writes, relative to the project root (mirrored in dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
OUTPUTS = Path("outputs")


def prepared(dataset: str) -> Path:
    return PREPARED / dataset


def text_encoder(dataset: str) -> Path:
    """The text_encoder@<dataset> stage's folder: ``text_encoder.pt`` (when a model needs one) and
    ``models/<model>.json``."""
    return OUTPUTS / "text_encoder" / dataset


def text_marker(dataset: str, model: str) -> Path:
    """Which text encoder ``model`` is trained with: a dep of its stages that changes only when that does."""
    return text_encoder(dataset) / "models" / f"{model}.json"


def classifier(dataset: str) -> Path:
    return OUTPUTS / "classifier" / dataset


def feature_network(dataset: str, name: str) -> Path:
    """Weights of feature network ``name`` (``classifier`` or ``resnet``) trained on ``dataset``."""
    return classifier(dataset) / f"{name}.pt"


def train(dataset: str, model: str) -> Path:
    return OUTPUTS / "train" / f"{dataset}-{model}"


def phema(dataset: str, model: str) -> Path:
    """The post-hoc EMA snapshots of a finished training run (``train.phema_widths``), one file per saved step."""
    return train(dataset, model) / "phema"


def phema_partial(dataset: str, model: str) -> Path:
    """The snapshots of the run in progress, beside the train stage's outputs but not one of them (as its resume.pt),
    so that an interrupted run keeps them; the stage copies them into :func:`phema` when training ends."""
    return train(dataset, model) / "phema.partial"


def latent_autoencoder(dataset: str, model: str) -> Path:
    """A latent model's autoencoder, beside the train stage's outputs but not one of them (as its resume.pt): the
    stage trains it first and re-uses it while the autoencoder's params, the training images and the package's code
    are unchanged, so that a change to the diffusion model's own params trains the diffusion model alone."""
    return train(dataset, model) / "autoencoder.pt"


def sample(dataset: str, model: str) -> Path:
    return OUTPUTS / "sample" / f"{dataset}-{model}"


def guidance_samples(dataset: str, model: str, w: float) -> Path:
    """The samples drawn at guidance scale ``w`` by the sample stage's guidance sweep."""
    return sample(dataset, model) / "guidance" / f"w_{w:g}.npy"


def ema_samples(dataset: str, model: str, width: float) -> Path:
    """The samples drawn from the EMA of relative width ``width`` rebuilt by the sample stage (``sample.ema_widths``)."""
    return sample(dataset, model) / "ema" / f"sigma_{width:g}.npy"


def attribute_samples(dataset: str, model: str) -> Path:
    """The folder of a text model's samples of the attribute prompts (samples.npy) and their grid (grid.png, a row
    per word, a column per class), drawn by the sample stage; empty for any other model."""
    return sample(dataset, model) / "attributes"


def evaluate(dataset: str, model: str) -> Path:
    return OUTPUTS / "evaluate" / f"{dataset}-{model}"


def restore(dataset: str, model: str, task: str) -> Path:
    """Stage restore@<dataset>-<model>-<task>: beside the model's evaluation, as a score of the model as a prior."""
    return evaluate(dataset, model) / "restore" / task


def reference(dataset: str) -> Path:
    return OUTPUTS / "reference" / dataset


def report() -> Path:
    return OUTPUTS / "report"


def checked_params() -> Path:
    """The check stage's record that params.yaml is valid: the same bytes whatever the params, so that a run whose
    params changed re-runs only the stages that read them."""
    return OUTPUTS / "check" / "params.json"
