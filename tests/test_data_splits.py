"""Train/val/test splits: determinism, disjointness, stratification, subsets, fingerprints, config checks."""

from __future__ import annotations

import pytest
import torch

import fixtures_data as fd
from kdlab.config import DataConfig
from kdlab.data import ImageSet, load_splits, stratified_split
from kdlab.errors import ConfigError


@pytest.fixture()
def fashion_root(tmp_path):
    fd.make_fashion_mnist(tmp_path, n_train=200, n_test=50)
    return str(tmp_path)


def _rows(images: ImageSet) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.images.reshape(len(images), -1)}


def test_split_is_deterministic_disjoint_and_stratified(fashion_root):
    cfg = DataConfig(root=fashion_root, val_ratio=0.2, split_seed=3)
    a, b = load_splits(cfg), load_splits(cfg)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert len(a.train) == 160 and len(a.val) == 40 and len(a.test) == 50
    assert torch.bincount(a.val.labels, minlength=10).tolist() == [4] * 10  # 20 per class in the fixture
    assert not _rows(a.train) & _rows(a.val)
    assert len(_rows(a.train) | _rows(a.val)) == 200


def test_split_depends_on_split_seed_only(fashion_root):
    base = load_splits(DataConfig(root=fashion_root, val_ratio=0.2, split_seed=0))
    other = load_splits(DataConfig(root=fashion_root, val_ratio=0.2, split_seed=1))
    assert _rows(base.val) != _rows(other.val) and base.fingerprint != other.fingerprint
    # Batch size, augmentation, test subset: none of them moves the held-out split.
    same = load_splits(DataConfig(root=fashion_root, val_ratio=0.2, split_seed=0, batch_size=7, augment=False,
                                  test_subset=10))
    assert _rows(same.val) == _rows(base.val) and len(same.test) == 10


def test_val_ratio_zero_gives_empty_val(fashion_root):
    splits = load_splits(DataConfig(root=fashion_root, val_ratio=0.0))
    assert len(splits.val) == 0 and len(splits.train) == 200
    assert splits.val.images.shape == (0, 1, 28, 28) and splits.val.labels.dtype == torch.int64


def test_subsets_take_the_first_images(fashion_root):
    full = load_splits(DataConfig(root=fashion_root, val_ratio=0.0))
    small = load_splits(DataConfig(root=fashion_root, val_ratio=0.0, train_subset=30, test_subset=500))
    assert torch.equal(small.train.images, full.train.images[:30]) and len(small.test) == 50
    assert small.fingerprint != full.fingerprint


def test_stratified_split_edge_cases():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    train, val = stratified_split(labels, 0.5, seed=0)
    assert sorted(train.tolist() + val.tolist()) == list(range(7))
    assert 4 in train.tolist()  # a class with one example keeps it for training
    assert torch.bincount(labels[val], minlength=3).tolist() == [2, 0, 1]
    assert torch.equal(train, torch.sort(train).values)
    empty_train, empty_val = stratified_split(torch.zeros(0, dtype=torch.int64), 0.3, seed=0)
    assert len(empty_train) == 0 and len(empty_val) == 0


def test_fingerprint_changes_with_the_data(tmp_path):
    fd.make_fashion_mnist(tmp_path / "a", n_train=40, n_test=10, seed=0)
    fd.make_fashion_mnist(tmp_path / "b", n_train=40, n_test=10, seed=5)
    a = load_splits(DataConfig(root=str(tmp_path / "a")))
    b = load_splits(DataConfig(root=str(tmp_path / "b")))
    assert a.fingerprint != b.fingerprint
    flipped = ImageSet(a.train.labels, images=a.train.images.clone())
    flipped.images[0, 0, 0, 0] ^= 1  # one pixel of the strided sample
    assert flipped.fingerprint != a.train.fingerprint


def test_imagefolder_splits_fingerprint_names(tmp_path):
    fd.make_imagefolder(tmp_path / "x", per_class=6)
    splits = load_splits(DataConfig(name="imagefolder", root=str(tmp_path / "x"), val_ratio=0.34))
    assert len(splits.val) == 6 and len(splits.train) == 12 and splits.train.paths is not None
    assert not set(splits.train.paths) & set(splits.val.paths)
    moved = tmp_path / "moved"
    (tmp_path / "x").rename(moved)
    again = load_splits(DataConfig(name="imagefolder", root=str(moved), val_ratio=0.34))
    assert again.fingerprint == splits.fingerprint  # the root path is not part of the data's identity


@pytest.mark.parametrize("key,value", [("val_ratio", 1.0), ("val_ratio", -0.1), ("batch_size", 0),
                                       ("train_subset", 0), ("crop_padding", -1), ("image_size", 0)])
def test_bad_config_values(fashion_root, key, value):
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        load_splits(DataConfig(root=fashion_root, **{key: value}))
