"""The runtime layer: building a model from its params, training it, its checkpoints, the model object and MLflow tracking."""
