import os

import pytest
import torch

# Tests never reach the network: fail fast if some code path tries.
os.environ.setdefault("NO_PROXY", "*")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
