"""Image folders streamed at any size: the imagenet recipe, workers, mid-epoch resume, the memory / disk caches,
bad files and the folder fingerprint (real JPEG/PNG files written with PIL)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kdlab.config import DataConfig
from kdlab.data import load_splits, make_loader
from kdlab.data.imagefolder import folder_fingerprint
from kdlab.data.recipes import Recipe, make_view, resized_crop_box, sample_rng
from kdlab.errors import DataError

CPU = torch.device("cpu")


def make_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (40, 52), classes=("a", "b")) -> Path:
    """train/ and val/ with JPEG and PNG images of two learnable classes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                pixels[..., c] = 255
                Image.fromarray(pixels).save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"), quality=90)
    return root


def cfg_for(root: Path, **kw) -> DataConfig:
    base = dict(name="imagefolder", root=str(root), recipe="imagenet", image_size=32, batch_size=4,
                eval_batch_size=5, val_ratio=0.0, workers=0, cache="none", cache_dir=str(root.parent / "cache"))
    return DataConfig(**{**base, **kw})


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(b.images.clone(), b.labels.clone(), b.index.clone()) for b in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def loader_for(cfg: DataConfig, train: bool = True, seed: int = 3):
    splits = load_splits(cfg)
    return make_loader(splits.train if train else splits.test, splits.info, cfg, train=train, device=CPU, seed=seed)


def test_imagenet_recipe_shapes_and_eval_is_resize_then_center_crop(tmp_path):
    root = make_folder(tmp_path / "d")
    cfg = cfg_for(root)
    train, test = loader_for(cfg), loader_for(cfg, train=False)
    assert train.recipe == Recipe("imagenet", 32, 37) and train.input_shape == (3, 32, 32)
    got = batches(train)
    assert len(got) == 3 and got[0][0].shape == (4, 3, 32, 32)
    yy, xx = np.mgrid[0:40, 0:52]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)  # a gradient: resampling-safe
    Image.fromarray(smooth).save(root / "val" / "a" / "0.png")
    x = next(iter(loader_for(cfg, train=False))).images
    base = np.asarray(Image.fromarray(smooth).resize((48, 37), Image.Resampling.BILINEAR)).astype(np.float32)
    # 52x40 -> shorter side 37 (32 / 0.875), then the central 32x32, un-normalized
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = (x[0] * std[:, None, None] + mean[:, None, None]) * 255
    expect = torch.from_numpy(base[2:34, 8:40].copy()).permute(2, 0, 1)
    assert (pixels - expect).abs().mean() < 2.0 and test.input_shape == (3, 32, 32)


def test_random_resized_crop_draws_within_the_ranges():
    for i in range(200):
        left, top, w, h = resized_crop_box(sample_rng(0, 0, i), 37, 37)
        assert 0 <= left and left + w <= 37 and 0 <= top and top + h <= 37
        assert 0.08 * 37 * 37 * 0.8 <= w * h and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.2
    base = np.random.default_rng(0).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    recipe = Recipe("imagenet", 32, 37)
    one = make_view(base, recipe, True, sample_rng(1, 2, 3))
    assert one.shape == (32, 32, 3) and np.array_equal(one, make_view(base, recipe, True, sample_rng(1, 2, 3)))
    assert not np.array_equal(one, make_view(base, recipe, True, sample_rng(1, 3, 3)))  # another epoch


def test_workers_give_the_batches_of_no_workers(tmp_path):
    root = make_folder(tmp_path / "d")
    serial = batches(loader_for(cfg_for(root)))
    assert same(batches(loader_for(cfg_for(root, workers=2))), serial)
    assert not same(batches(loader_for(cfg_for(root), seed=4)), serial)


def test_resume_mid_epoch_gives_the_remaining_batches(tmp_path):
    root = make_folder(tmp_path / "d")
    for cache in ("none", "memory"):
        for recipe in ("imagenet", "small"):
            loader = loader_for(cfg_for(root, cache=cache, recipe=recipe, image_size=32))
            loader.set_epoch(2)
            full = batches(loader)
            loader.set_epoch(2, start_batch=1)
            assert same(batches(loader), full[1:]) and len(full) == 3


def test_memory_and_disk_caches_give_the_views_of_the_files(tmp_path):
    root = make_folder(tmp_path / "d")
    for train in (False, True):
        files = batches(loader_for(cfg_for(root), train=train))
        memory = loader_for(cfg_for(root, cache="memory"), train=train)
        disk = loader_for(cfg_for(root, cache="disk", workers=1), train=train)
        assert memory.cache == "memory" and disk.cache == "disk"
        assert same(batches(memory), files) and same(batches(disk), files)
    copies = list((tmp_path / "cache").glob("*.arrow"))
    assert len(copies) == 2 and not list((tmp_path / "cache").glob(".*tmp*"))  # train/ and val/, no temp left
    (root / "train" / "a" / "0.png").unlink()  # the folder changes: a new copy is keyed by the new fingerprint
    loader_for(cfg_for(root, cache="disk"))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 3


def test_small_recipe_memory_fast_path_is_chosen_automatically(tmp_path):
    root = make_folder(tmp_path / "d")
    auto = loader_for(cfg_for(root, recipe="auto", image_size=16, cache="auto"))
    assert auto.recipe.name == "small" and auto.cache == "memory" and auto._images is not None
    streamed = loader_for(cfg_for(root, recipe="auto", image_size=16, cache="none", workers=2))
    assert same(batches(auto), batches(streamed)) and auto.stream_key == streamed.stream_key


def bad_files(root: Path) -> dict[str, bytes]:
    good = (root / "train" / "a" / "1.jpg").read_bytes()
    small = root / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(small)
    return {"empty.jpg": b"", "text.png": b"hello, not an image", "truncated.jpg": good[: len(good) // 2],
            "tiny.png": small.read_bytes()}


@pytest.mark.parametrize("name", ["empty.jpg", "text.png", "truncated.jpg", "tiny.png"])
def test_each_bad_file_is_one_line_naming_it(tmp_path, name):
    root = make_folder(tmp_path / "d")
    (root / "train" / "b" / name).write_bytes(bad_files(root)[name])
    with pytest.raises(DataError) as info:
        batches(loader_for(cfg_for(root)))  # at listing (headers), else when decoded (a truncated JPEG body)
    message = str(info.value)
    assert "\n" not in message and name in message


def test_skip_bad_files_counts_them(tmp_path):
    root = make_folder(tmp_path / "d")
    for name, payload in bad_files(root).items():
        (root / "train" / "b" / name).write_bytes(payload)
    for cache in ("none", "memory", "disk"):
        loader = loader_for(cfg_for(root, skip_bad_files=True, cache=cache, batch_size=5))
        seen = sum(len(b[1]) for b in batches(loader))
        # three bad headers are left out at listing; the truncated JPEG is dropped when decoded
        assert loader.skipped_files == 4, cache
        assert len(loader.split.skipped) == 3 and seen <= len(loader.split) - 1


def test_a_class_folder_without_images_is_one_line(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/c has no"):
        load_splits(cfg_for(root))


def test_folder_fingerprint_follows_size_and_mtime_only(tmp_path):
    root = make_folder(tmp_path / "d")
    first = folder_fingerprint(root)
    assert folder_fingerprint(root) == first
    (root / "notes.txt").write_text("not an image")  # other files do not count
    assert folder_fingerprint(root) == first
    path = root / "train" / "a" / "0.png"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = folder_fingerprint(root)
    assert touched != first
    path.write_bytes(path.read_bytes() + b"\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert folder_fingerprint(root) not in (first, touched)
    splits = load_splits(cfg_for(root))
    assert splits.train.folder_fingerprint == folder_fingerprint(root / "train")


def test_one_epoch_trains_on_a_streamed_folder(tmp_path):
    import kdlab

    root = make_folder(tmp_path / "d", per_class=8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    run = kdlab.train(model, {"name": "imagefolder", "root": str(root)}, epochs=1, device="cpu", progress=False,
                      precision="fp32", out_dir=str(tmp_path / "runs"),
                      dataset={"recipe": "imagenet", "image_size": 32, "cache": "none", "workers": 1,
                               "batch_size": 4, "val_ratio": 0.25})
    (row,) = run.history
    assert row["epoch"] == 1 and row["train_img_s"] > 0 and "val_top1" in row
