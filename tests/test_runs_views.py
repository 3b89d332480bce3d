"""Each model sees its own input: a teacher trained on another normalization, size or channel count gets its own view
of the student's batches, and a user's Dataset normalized unlike the teacher's data is warned about."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import kdlab
from kdlab.config import DataConfig, from_dict
from kdlab.data import DatasetInfo, load_splits, make_loader
from kdlab.runs.views import InputView, convert, data_view, give_view, needs_view, recorded_view

REAL = Path("/usr/share/datasets/fashion-mnist")
INFO = DatasetInfo("fashion_mnist", 10, 1, (28, 28), tuple("abcdefghij"), (0.286,), (0.353,), False)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_a_view_renormalizes_repeats_channels_and_resizes():
    pixels = torch.rand(2, 1, 28, 28)
    grey = InputView((28, 28), 1, (0.286,), (0.353,))
    rgb = InputView((28, 28), 3, *IMAGENET)
    out = convert((pixels - 0.286) / 0.353, grey, rgb)
    expected = (pixels.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    big = convert((pixels - 0.286) / 0.353, grey, InputView((56, 56), 1, (0.286,), (0.353,)))
    assert big.shape == (2, 1, 56, 56)
    assert not needs_view(grey, InputView((28, 28), 1, (0.286,), (0.353,)))
    assert needs_view(grey, InputView((32, 32), 1, (0.286,), (0.353,)))


def test_a_checkpoint_without_a_recorded_input_is_read_from_its_data_settings():
    meta = {"dataset": {"name": "fashion_mnist", "normalize": "imagenet", "channels": 3, "image_size": 32}}
    view = recorded_view(meta, INFO)
    assert view is not None and view.size == (32, 32) and view.channels == 3 and view.mean == IMAGENET[0]
    assert recorded_view({"dataset": {"name": "cifar10"}}, INFO) is None  # another dataset: not knowable here


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(), reason="needs the real Fashion-MNIST")
def test_a_teacher_trained_on_another_input_keeps_its_accuracy_on_the_students_data(tmp_path, caplog):
    data = {"name": "fashion_mnist", "train_subset": 1500, "test_subset": 300, "batch_size": 64}
    teacher = kdlab.train("cnn_small", {**data, "normalize": "imagenet", "channels": 3, "image_size": 32}, epochs=2,
                          out_dir=str(tmp_path), name="teacher", device="cpu")
    assert json.loads((teacher.run_dir / "meta.json").read_text())["input"]["size"] == [32, 32]
    own = teacher.metrics["test_top1"]
    assert own > 50  # it learned something
    with caplog.at_level(logging.INFO, logger="kdlab"):
        student = kdlab.distill("cnn_tiny", teacher.run_dir, "kd", data, epochs=1, out_dir=str(tmp_path),
                                name="student", device="cpu")
    assert any("sees its own view" in r.message for r in caplog.records)
    assert student.metrics["epochs"] == 1
    # the teacher through its view, on the student's data (28 px grey, the dataset's statistics): its own accuracy
    model = teacher.model
    images, labels = _test_batch(data)
    source = data_view(images, INFO, from_dict(DataConfig, data), own_objects=False)
    give_view(model, source, InputView.from_dict(json.loads((teacher.run_dir / "meta.json").read_text())["input"]),
              images, "teacher")
    with torch.no_grad():
        seen = (model(images).argmax(1) == labels).float().mean().item() * 100
    assert abs(seen - own) < 3.0, (seen, own)


def test_a_users_dataset_normalized_unlike_the_teachers_data_is_warned_about(tmp_path, fmnist, caplog):
    data = {"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32}
    teacher = kdlab.train("cnn_tiny", data, epochs=1, out_dir=str(tmp_path), name="t", device="cpu")
    images = torch.rand(64, 1, 28, 28) * 2 - 1  # the user's [-1, 1] scaling
    own = (TensorDataset(images, torch.arange(64) % 10), TensorDataset(images[:16], torch.arange(16) % 10))
    with caplog.at_level(logging.WARNING, logger="kdlab"):
        kdlab.distill("cnn_tiny", teacher.run_dir, "kd", own, epochs=1, out_dir=str(tmp_path), name="s",
                      device="cpu")
    assert any("normalized with mean" in r.message for r in caplog.records)


def _test_batch(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = from_dict(DataConfig, data)
    splits = load_splits(cfg)
    loader = make_loader(splits.test, splits.info, cfg, train=False, device=torch.device("cpu"))
    batches = list(loader)
    return torch.cat([b.images for b in batches]).float(), torch.cat([b.labels for b in batches])
