"""Shared pytest set-up: CPU only, few threads, deterministic."""

import os

import pytest
import torch

os.environ.setdefault("KDLAB_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _small_torch():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
