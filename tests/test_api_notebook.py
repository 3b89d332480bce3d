"""The example notebook runs end to end through a real Jupyter kernel (nbclient), on a tiny configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fixtures_data import make_fashion_mnist
from kdlab.models import create_model
from kdlab.models.hub import TORCHVISION_DEFAULTS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "kd_workflow.ipynb"


def test_example_notebook_executes(tmp_path, monkeypatch):
    make_fashion_mnist(tmp_path / "fmnist", n_train=700, n_test=200)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"  # stand-in ImageNet weights, as torchvision caches them
    checkpoints.mkdir(parents=True)
    for arch in ("resnet18", "mobilenetv3_small"):
        torch.save(create_model(arch, num_classes=1000).state_dict(), checkpoints / TORCHVISION_DEFAULTS[arch][1])
    for key, value in {"KDLAB_NOTEBOOK_TINY": "1", "KDLAB_NOTEBOOK_OUT": str(tmp_path / "runs"),
                       "KDLAB_FASHION_MNIST": str(tmp_path / "fmnist"), "TORCH_HOME": str(tmp_path / "torch"),
                       "OMP_NUM_THREADS": "2"}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "ImageNet weights available: True" in outputs and "loaded in" in outputs
    for run in ("teacher", "baseline-scratch", "baseline-pretrained", "kd", "kd-features"):
        assert (tmp_path / "runs" / run / "result.json").is_file(), run
