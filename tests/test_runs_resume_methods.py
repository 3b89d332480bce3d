"""Every registered method resumes exactly: 2 epochs straight == 1 epoch, interrupted, then resumed for the second."""

from __future__ import annotations

import pytest
import torch

import kdlab
from fixtures_data import make_fashion_mnist
from fixtures_methods import DISTILLED_STUDENT_METHODS
from kdlab.engine.trainer import Trainer
from kdlab.files import load_weights
from kdlab.methods import METHODS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    make_fashion_mnist(base / "data", n_train=120, n_test=20)
    data = {"name": "fashion_mnist", "root": str(base / "data"), "batch_size": 32}
    common = {"device": "cpu", "progress": False, "out_dir": str(base / "runs")}
    teacher = kdlab.train("cnn_tiny", data, epochs=1, name="teacher", **common)
    return data, common, teacher


# cnn_tiny has no distillation head: deit needs a distilled DeiT (its runs are in test_methods_recent.py)
@pytest.mark.parametrize("method", [m for m in METHODS.list() if m not in DISTILLED_STUDENT_METHODS])
def test_resume_is_exact(method, setup, monkeypatch):
    data, common, teacher = setup
    kwargs = {"method": method, "data": data, "epochs": 2, **common}
    if METHODS.get(method).needs_teacher:
        kwargs["teacher"] = teacher
    straight = kdlab.train("cnn_tiny", name=f"{method}-straight", **kwargs)

    original = Trainer._checkpoint

    def stop_after_first(self, epochs_done):
        original(self, epochs_done)
        raise KeyboardInterrupt  # as a Ctrl-C (or a kill) right after epoch 1's checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_checkpoint", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            kdlab.train("cnn_tiny", name=f"{method}-resumed", **kwargs)
    resumed = kdlab.train("cnn_tiny", name=f"{method}-resumed", **kwargs)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    a, _ = load_weights(straight.run_dir / "model.safetensors")
    b, _ = load_weights(resumed.run_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{method}: {key} differs after resuming"
    assert resumed.metrics["test_top1"] == straight.metrics["test_top1"]
