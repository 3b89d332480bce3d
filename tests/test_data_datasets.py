"""Dataset readers against tiny files in the genuine formats: round trips and one-line DataErrors."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fixtures_data as fd
from kdlab.config import DataConfig
from kdlab.data import DATASETS, ImageSet, load_dataset, load_splits
from kdlab.errors import ConfigError, DataError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def data_error(cfg: DataConfig, *fragments: str) -> str:
    """Load ``cfg`` expecting a one-line DataError containing every fragment."""
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_registry_lists_the_datasets():
    assert DATASETS.list() == ["cifar10", "cifar100", "fashion_mnist", "hf", "imagefolder"]
    with pytest.raises(ConfigError, match="valid datasets: cifar10"):
        load_dataset(DataConfig(name="mnist"))


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_round_trip(tmp_path):
    arrays = fd.make_fashion_mnist(tmp_path, n_train=30, n_test=12)
    raw = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert raw.info.num_classes == 10 and raw.info.in_channels == 1 and raw.info.image_size == (28, 28)
    assert raw.info.class_names[0] == "T-shirt/top" and raw.info.class_names[-1] == "Ankle boot"
    assert raw.info.mean == (0.2860,) and raw.info.flip
    for split, images in (("train", raw.train), ("test", raw.test)):
        assert images.images.dtype == torch.uint8 and images.images.shape == (len(arrays[split][0]), 1, 28, 28)
        assert images.labels.dtype == torch.int64
        assert np.array_equal(images.images[:, 0].numpy(), arrays[split][0])
        assert np.array_equal(images.labels.numpy(), arrays[split][1])


def test_fashion_mnist_root_from_environment(tmp_path, monkeypatch):
    fd.make_fashion_mnist(tmp_path, n_train=10, n_test=10)
    monkeypatch.setenv("KDLAB_FASHION_MNIST", str(tmp_path))
    assert len(load_dataset(DataConfig(name="fashion_mnist")).train) == 10


def test_fashion_mnist_accepts_gunzipped_files(tmp_path):
    images, labels = fd.fashion_arrays(10, 0)
    for split in ("train", "test"):
        (tmp_path / fd.FASHION_FILES[split][0].removesuffix(".gz")).write_bytes(fd.idx_bytes(images))
        (tmp_path / fd.FASHION_FILES[split][1].removesuffix(".gz")).write_bytes(fd.idx_bytes(labels))
    assert len(load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path))).test) == 10


def test_fashion_mnist_missing(tmp_path):
    cfg = DataConfig(name="fashion_mnist", root=str(tmp_path / "nowhere"))
    data_error(cfg, "does not exist", "apt-get install dataset-fashion-mnist", "KDLAB_FASHION_MNIST")
    fd.make_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "t10k-labels-idx1-ubyte.gz is missing")


def test_fashion_mnist_bad_magic(tmp_path):
    fd.make_fashion_mnist(tmp_path)
    images, _ = fd.fashion_arrays(60, 0)
    fd.write_gz(tmp_path / "train-images-idx3-ubyte.gz", fd.idx_bytes(images, magic=2049))
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "bad IDX magic number 2049", "expected 2051")


def test_fashion_mnist_truncated(tmp_path):
    fd.make_fashion_mnist(tmp_path, n_train=60)
    images, _ = fd.fashion_arrays(60, 0)
    payload = fd.idx_bytes(images)
    fd.write_gz(tmp_path / "train-images-idx3-ubyte.gz", payload[:-100])  # valid gzip, short content
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "is truncated: expected 47056 bytes", "47")
    # A cut gzip stream (an interrupted download).
    whole = fd.write_gz(tmp_path / "train-images-idx3-ubyte.gz", payload).read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "is truncated", "gzip stream ends early")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "not a valid gzip file")


def test_fashion_mnist_label_out_of_range_and_count_mismatch(tmp_path):
    fd.make_fashion_mnist(tmp_path, n_train=20)
    labels = np.zeros(20, dtype=np.uint8)
    labels[7] = 10
    fd.write_gz(tmp_path / "train-labels-idx1-ubyte.gz", fd.idx_bytes(labels))
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "label 10 out of range 0..9")
    fd.write_gz(tmp_path / "train-labels-idx1-ubyte.gz", fd.idx_bytes(labels[:19] % 10))
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "20 images but 19 labels")
    wrong = np.zeros((20, 28, 27), dtype=np.uint8)
    fd.write_gz(tmp_path / "train-images-idx3-ubyte.gz", fd.idx_bytes(wrong))
    data_error(DataConfig(name="fashion_mnist", root=str(tmp_path)), "28x27", "expected 28x28")


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="real Fashion-MNIST not installed")
def test_real_fashion_mnist():
    splits = load_splits(DataConfig(name="fashion_mnist", root=str(REAL_FASHION), val_ratio=0.1))
    assert len(splits.train) + len(splits.val) == 60000 and len(splits.test) == 10000
    assert len(splits.val) == 6000
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.info.num_classes == 10
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10
    assert torch.bincount(splits.val.labels).tolist() == [600] * 10  # stratified
    mean = splits.test.images.float().mean().item() / 255
    assert abs(mean - 0.2860) < 0.01


# ------------------------------------------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("variant,archive,bytes_keys", [("cifar10", True, True), ("cifar10", False, False),
                                                        ("cifar100", True, True), ("cifar100", False, True)])
def test_cifar_round_trip(tmp_path, variant, archive, bytes_keys):
    files = fd.make_cifar(tmp_path, variant, per_batch=6, archive=archive, bytes_keys=bytes_keys)
    raw = load_dataset(DataConfig(name=variant, root=str(tmp_path)))
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if variant == "cifar10" else ["train"]
    test_file = "test_batch" if variant == "cifar10" else "test"
    label_key = "labels" if variant == "cifar10" else "fine_labels"
    for images, names in ((raw.train, train_files), (raw.test, [test_file])):
        batches = [fd.unpickle_cifar(files[n]) for n in names]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        assert images.images.dtype == torch.uint8 and np.array_equal(images.images.numpy(), data)
        assert images.labels.tolist() == sum((b[label_key] for b in batches), [])
    n_classes = 10 if variant == "cifar10" else 100
    assert raw.info.num_classes == n_classes and len(raw.info.class_names) == n_classes
    assert raw.info.class_names[1] == ("class1" if variant == "cifar10" else "fine1")
    assert raw.info.image_size == (32, 32) and raw.info.in_channels == 3 and raw.info.flip


def test_cifar_archive_path_and_environment(tmp_path, monkeypatch):
    fd.make_cifar(tmp_path, "cifar10", per_batch=2)
    assert len(load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "cifar-10-python.tar.gz"))).train) == 10
    monkeypatch.setenv("KDLAB_CIFAR10", str(tmp_path))
    assert len(load_dataset(DataConfig(name="cifar10")).test) == 2


def test_cifar_normalization_statistics(tmp_path):
    fd.make_cifar(tmp_path, "cifar10", per_batch=1)
    fd.make_cifar(tmp_path, "cifar100", per_batch=1)
    c10 = load_dataset(DataConfig(name="cifar10", root=str(tmp_path))).info
    c100 = load_dataset(DataConfig(name="cifar100", root=str(tmp_path))).info
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2470, 0.2435, 0.2616)
    assert c100.mean == (0.5071, 0.4865, 0.4409) and c100.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing(tmp_path):
    data_error(DataConfig(name="cifar10", root=str(tmp_path)), "CIFAR-10 not found", "cifar-10-python.tar.gz",
               "KDLAB_CIFAR10")
    data_error(DataConfig(name="cifar100", root=str(tmp_path)), "CIFAR-100 not found", "KDLAB_CIFAR100")
    fd.make_cifar(tmp_path, "cifar10", archive=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    data_error(DataConfig(name="cifar10", root=str(tmp_path)), "data_batch_3 is missing")


class _Exploit:
    """Pickles to a call of os.system: what a tampered dataset file could contain."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=2)
    fd.make_cifar(tmp_path, "cifar10", overrides={"data_batch_2": evil})
    message = data_error(DataConfig(name="cifar10", root=str(tmp_path)), "data_batch_2", "refusing to load")
    assert "system" in message
    assert not marker.exists()


def test_cifar_corrupt_batches(tmp_path):
    bad_labels = fd._py2_style_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    fd.make_cifar(tmp_path / "a", "cifar10", overrides={"test_batch": bad_labels})
    data_error(DataConfig(name="cifar10", root=str(tmp_path / "a")), "test_batch", "label 10 out of range 0..9")
    bad_shape = fd._py2_style_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    fd.make_cifar(tmp_path / "b", "cifar10", overrides={"data_batch_1": bad_shape})
    data_error(DataConfig(name="cifar10", root=str(tmp_path / "b")), "shape [N, 3072]")
    fd.make_cifar(tmp_path / "c", "cifar100", overrides={"train": b"\x80\x02garbage"})
    data_error(DataConfig(name="cifar100", root=str(tmp_path / "c")), "pickle")
    (tmp_path / "d").mkdir()
    whole = (tmp_path / "c" / "cifar-100-python.tar.gz").read_bytes()
    (tmp_path / "d" / "cifar-100-python.tar.gz").write_bytes(whole[: len(whole) // 2])
    data_error(DataConfig(name="cifar100", root=str(tmp_path / "d")), "cifar-100-python.tar.gz")


# ------------------------------------------------------------------------------------------------------ ImageFolder


def test_imagefolder_round_trip(tmp_path):
    fd.make_imagefolder(tmp_path, per_class=4)
    raw = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    assert raw.info.class_names == ("cat", "dog", "fox") and raw.info.num_classes == 3
    assert raw.info.in_channels == 3 and raw.info.image_size == (64, 64)
    assert raw.info.mean == (0.485, 0.456, 0.406) and raw.info.flip
    assert len(raw.train) == 12 and len(raw.test) == 6 and raw.train.paths is not None
    assert raw.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    decoded = raw.train.decoded()
    assert decoded.images.shape == (12, 3, 64, 64) and decoded.images.dtype == torch.uint8
    assert raw.train.decoded() is decoded  # cached
    # A colour PNG survives decoding up to resampling: the class channel (cat: red) stays saturated.
    assert decoded.images[0, 0].float().mean() > 250


def test_imagefolder_stored_size_and_exact_pixels(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "x.png")
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "val" / "a" / "y.jpeg")
    raw = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8))
    assert raw.info.image_size == (8, 8)
    assert np.array_equal(raw.train.decoded().images[0].permute(1, 2, 0).numpy(), pixels)  # no resize: exact


def test_imagefolder_test_folder_alias(tmp_path):
    fd.make_imagefolder(tmp_path, test_folder="test")
    assert len(load_dataset(DataConfig(name="imagefolder", root=str(tmp_path))).test) == 6


def test_imagefolder_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("KDLAB_IMAGEFOLDER", raising=False)
    data_error(DataConfig(name="imagefolder"), "needs a root", "KDLAB_IMAGEFOLDER")
    data_error(DataConfig(name="imagefolder", root=str(tmp_path / "none")), "does not exist")
    (tmp_path / "train").mkdir()
    data_error(DataConfig(name="imagefolder", root=str(tmp_path)), "has no class sub-folders")
    fd.make_imagefolder(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "wolf")
    data_error(DataConfig(name="imagefolder", root=str(tmp_path)), "same classes as train", "wolf")
    (tmp_path / "val" / "wolf").rename(tmp_path / "val" / "dog")
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "val" / "empty").mkdir()
    data_error(DataConfig(name="imagefolder", root=str(tmp_path)), "empty has no .png/.jpg/.jpeg images")
    (tmp_path / "train" / "empty" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "val" / "empty" / "ok.png").write_bytes((tmp_path / "val" / "cat" / "0.png").read_bytes())
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):  # headers checked at listing
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_idx_header_is_big_endian():
    assert fd.idx_bytes(np.zeros((2, 28, 28), np.uint8))[:16] == struct.pack(">4I", 2051, 2, 28, 28)


def test_imagefolder_parallel_decoding_matches_serial(tmp_path):
    from kdlab.data.decode import decode_all

    fd.make_imagefolder(tmp_path, per_class=3)
    raw = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    serial = decode_all(raw.train.paths, (16, 16), workers=0)
    assert torch.equal(decode_all(raw.train.paths, (16, 16), workers=1, min_parallel=1), serial)
    (tmp_path / "train" / "dog" / "0.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"^cannot decode image .*dog/0.png"):
        decode_all(raw.train.paths, (16, 16), workers=1, min_parallel=1)


def test_imageset_validation_and_subsets():
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError):
        ImageSet(labels)
    with pytest.raises(ValueError):
        ImageSet(labels, images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError):
        ImageSet(labels.int(), images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8))
    on_disk = ImageSet(labels, paths=["a/x.png", "b/y.png", "c/z.png"], decode_size=(4, 4))
    part = on_disk.subset(torch.tensor([2, 0]))
    assert part.paths == ["c/z.png", "a/x.png"] and part.labels.tolist() == [2, 0] and part.decode_size == (4, 4)
    assert on_disk.subset(range(2)).paths == ["a/x.png", "b/y.png"] and on_disk.decoded_bytes == 3 * 3 * 16
