"""model.pretrained=torchvision|timm: the libraries' ImageNet weights, found in their caches (pre-populated here)."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models import create_model
from kdlab.models.hub import TORCHVISION_DEFAULTS
from kdlab.models.weights import load_pretrained


@pytest.fixture
def no_libraries(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on this machine: neither library imports
    monkeypatch.setitem(sys.modules, "timm", None)


def imagenet_resnet18(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=1000).state_dict()


def test_torchvision_weights_from_the_torch_hub_cache(tmp_path, monkeypatch, no_libraries):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = imagenet_resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / TORCHVISION_DEFAULTS["resnet18"][1])
    model = create_model("resnet18", num_classes=10, in_channels=1)
    report = load_pretrained(model, "torchvision", arch="resnet18")
    assert report.skipped == ["fc.weight", "fc.bias"] and report.adapted  # 1000 -> 10 classes, RGB -> grey
    torch.testing.assert_close(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_timm_weights_from_the_hugging_face_cache(tmp_path, monkeypatch, no_libraries):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    state = imagenet_resnet18(seed=1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    model = create_model("resnet18", num_classes=5)
    load_pretrained(model, "timm", arch="resnet18")
    torch.testing.assert_close(model.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])


def test_missing_weights_and_unfit_architectures_are_one_line_errors(tmp_path, monkeypatch, no_libraries):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    model = create_model("resnet18", num_classes=10)
    with pytest.raises(CheckpointError, match=r"torchvision is not importable .*/resnet18-f37072fd\.pth"):
        load_pretrained(model, "torchvision", arch="resnet18")
    with pytest.raises(CheckpointError, match="timm is not importable"):
        load_pretrained(model, "timm", arch="resnet18")
    with pytest.raises(ConfigError, match="no torchvision ImageNet weights fit kdlab's 'resnet20'"):
        load_pretrained(create_model("resnet20"), "torchvision", arch="resnet20")
    with pytest.raises(ConfigError, match="does not fit model 'timm:resnet18'"):
        load_pretrained(model, "torchvision", arch="timm:resnet18")


def test_pretrained_torchvision_through_a_run_config(tmp_path, monkeypatch, no_libraries):
    from fixtures_data import make_fashion_mnist
    from kdlab.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(imagenet_resnet18(), tmp_path / "hub" / "checkpoints" / TORCHVISION_DEFAULTS["resnet18"][1])
    make_fashion_mnist(tmp_path / "data", n_train=40, n_test=10)
    assert main(["train", "model=resnet18", "model.pretrained=torchvision", "model.small_input=true",
                 f"dataset.root={tmp_path / 'data'}", "dataset.batch_size=16", "epochs=1", "device=cpu",
                 "progress=false", f"out_dir={tmp_path / 'runs'}"]) == 0
