"""The trained-model object under the name MLflow models logged by earlier versions pickled it by
(``diffusionlab.model._rebuild``): loading one resolves that name here. The object itself is
:class:`diffusionlab.runtime.model.DiffusionModel`."""

from .runtime.model import DiffusionModel, _rebuild

__all__ = ["DiffusionModel", "_rebuild"]
