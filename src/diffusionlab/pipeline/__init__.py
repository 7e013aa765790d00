"""What each DVC stage does, one module per stage, as functions of the validated params.

Each module imports only what its stage needs, so that dvc.yaml can list exact dependencies.
"""
