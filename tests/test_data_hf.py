"""Hugging Face datasets as a source: ``dataset=hf:DIR`` (save_to_disk, Parquet files) and objects through the API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

datasets = pytest.importorskip("datasets")

import kdlab  # noqa: E402
from kdlab.cli import main  # noqa: E402
from kdlab.config import DataConfig  # noqa: E402
from kdlab.data import load_splits  # noqa: E402
from kdlab.data.custom import DatasetSplit  # noqa: E402
from kdlab.errors import ConfigError  # noqa: E402

COMMON = {"epochs": 1, "device": "cpu", "progress": False, "precision": "fp32"}


def tiny_hf(n: int, seed: int = 0, image: str = "image", label: str = "label"):
    """n RGB 8x8 PIL images whose brightness tells their class (0 or 1), as a datasets.Dataset."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(n)]
    images = [Image.fromarray(rng.integers(0, 60, (8, 8, 3), dtype=np.uint8) + 150 * y) for y in labels]
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=["dark", "light"])})
    return datasets.Dataset.from_dict({image: images, label: labels}, features=features)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "tiny"
    datasets.DatasetDict({"train": tiny_hf(48), "test": tiny_hf(16, seed=1)}).save_to_disk(str(root))
    return root


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def test_hf_dir_loads_in_memory_with_a_held_out_val(hf_dir):
    splits = load_splits(DataConfig(name=f"hf:{hf_dir}"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (44, 4, 16)
    assert splits.info.class_names == ("dark", "light") and splits.info.in_channels == 3
    assert splits.train.in_memory and tuple(splits.train.image_shape) == (3, 8, 8)
    assert load_splits(DataConfig(name=f"hf:{hf_dir}")).fingerprint == splits.fingerprint


def test_hf_dir_streams_when_not_in_memory(hf_dir):
    splits = load_splits(DataConfig(name=f"hf:{hf_dir}", in_memory=False))
    assert isinstance(splits.train, DatasetSplit) and len(splits.test) == 16
    image, label = splits.train.sample(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8) and label in (0, 1)


def test_hf_dir_trains_through_the_cli(hf_dir, tmp_path, capsys):
    code = main(["train", "model=cnn_tiny", f"dataset=hf:{hf_dir}", "epochs=1", "device=cpu", "progress=false",
                 "precision=fp32", f"out_dir={tmp_path}", "dataset.batch_size=16"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= metrics["test_top1"] <= 100.0


def test_parquet_files_with_a_validation_split(tmp_path):
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        tiny_hf(n, seed=n).to_parquet(str(tmp_path / f"{split}-00000-of-00001.parquet"))
    splits = load_splits(DataConfig(name=f"hf:{tmp_path}"))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 8, 8)


def test_hf_objects_train_through_the_api(tmp_path):
    data = datasets.DatasetDict({"train": tiny_hf(40, image="img", label="labels"),
                                 "validation": tiny_hf(8, 2, "img", "labels"), "test": tiny_hf(8, 1, "img", "labels")})
    run = kdlab.train(model(), data, out_dir=str(tmp_path), **COMMON)
    assert "test_top1" in run.metrics
    splits = load_splits(DataConfig(name="x"), data=data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 8, 8)
    other = datasets.DatasetDict({**data, "test": tiny_hf(8, 5, "img", "labels")})
    assert load_splits(DataConfig(name="x"), data=other).fingerprint != splits.fingerprint


def test_missing_column_names_it_and_the_columns_present(hf_dir):
    with pytest.raises(ConfigError, match=r"dataset.image_column.*'pixels'.*its columns: image, label"):
        load_splits(DataConfig(name=f"hf:{hf_dir}", image_column="pixels"))
    with pytest.raises(ConfigError, match=r"dataset.label_column.*'label' or 'labels'.*its columns: image, y"):
        load_splits(DataConfig(name="x"), data=tiny_hf(8, label="y"))
