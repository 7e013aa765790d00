"""Errors a stage reports as a clear message rather than a traceback."""


class ConfigError(ValueError):
    """A value in ``params.yaml`` is missing, of the wrong type, out of range or contradictory."""


class DatasetUnavailable(RuntimeError):
    """A dataset could not be downloaded or failed its checksum."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights (InceptionV3 for FID) are neither on disk nor downloadable."""


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or infinite."""


class StageInputError(RuntimeError):
    """A stage's inputs exist but cannot be used as they are (stale or below a quality threshold)."""


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached and params say tracking is required."""


EXPECTED_ERRORS = (ConfigError, DatasetUnavailable, WeightsUnavailable, TrainingDiverged, StageInputError,
                   TrackingUnavailable, FileNotFoundError)
