"""Shared pytest set-up: CPU only, few threads, deterministic."""

import os

import pytest
import torch

os.environ.setdefault("KDLAB_NO_PROGRESS", "1")
os.environ.setdefault("KDLAB_THREADS", "2")  # pinned: a thread count chosen from the load would change the numbers


@pytest.fixture(autouse=True)
def _small_torch():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory):
    """A small Fashion-MNIST in its genuine format (200 train / 60 test images, every class present)."""
    from fixtures_data import make_fashion_mnist

    root = tmp_path_factory.mktemp("fmnist")
    make_fashion_mnist(root, n_train=200, n_test=60)
    return root
