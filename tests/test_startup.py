"""What a stage imports when it starts: a stage that scores no features starts without torch-fidelity (and the
torchvision and torch._dynamo it imports), and no stage starts with MLflow's model flavour, which the train stage
loads when it logs the model. The end-to-end tests check what each stage loads over its whole run."""

import json
import subprocess
import sys

UNSCORED = ["prepare", "classifier", "train", "sample", "report"]
SCORING = ["reference", "evaluate", "restore"]
SCRIPT = """
import importlib, json, sys
from diffusionlab.pipeline.cli import HEAVY
loaded = {}
for name in sys.argv[1:]:
    importlib.import_module(f"diffusionlab.pipeline.{name}")
    loaded[name] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(loaded))
"""


def test_stages_that_score_no_features_start_without_torch_fidelity_and_none_with_mlflows_model_flavour():
    """The stage modules imported one after another in one process (each sees what those before it loaded)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, *UNSCORED, *SCORING], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    for name in UNSCORED:
        assert not {"torch_fidelity", "torchvision", "torch._dynamo"} & set(loaded[name]), (name, loaded[name])
    for name in UNSCORED + SCORING:
        assert "mlflow.pytorch" not in loaded[name], name
    assert {"torch_fidelity", "torchvision"} <= set(loaded["reference"])
