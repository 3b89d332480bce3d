"""Image-folder pipeline: decode rate per worker, a student epoch streamed vs in memory, and peak memory.

    python benchmarks/data_pipeline.py                       # quick: 600 images, 64 px
    python benchmarks/data_pipeline.py --images 20000 --image-size 224 --peak --model cnn_tiny   # the issue's check

Generates ``--images`` JPEGs of 256x256 (10 classes) under ``--out`` (kept between runs), then measures:
1. decoded images/s of one DataLoader worker (imagenet recipe, training views, ``cache=none``);
2. a training epoch of a small student (``--model``, default kdlab's ``resnet20``) streamed with ``--workers``
   workers vs from memory (``cache=memory``; the second of two epochs each, so the first fills the cache), images/s,
   and their ratio (the issue's target: >= 0.9 with 2 workers);
3. with ``--peak``: peak memory (PSS of this process and its children, from /proc via psutil) over one streamed
   training epoch of the student on the folder and on a folder twice its size (targets: < 2.5 GB, and the doubled
   folder raises it by < 10%).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from kdlab.config import DataConfig
from kdlab.data import load_splits, make_loader
from kdlab.models import create_model


def make_images(root: Path, n: int, classes: int = 10) -> Path:
    """``root/train/c<k>/<i>.jpg`` (256x256, smooth class-coloured noise) and a small ``val/``; kept if present."""
    marker = root / f".done-{n}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", max(classes, n // 50))):
        for i in range(count):
            k = i % classes
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            small[..., k % 3] = 200
            Image.fromarray(small).resize((256, 256), Image.Resampling.BILINEAR).save(folder / f"{i}.jpg", quality=85)
    marker.touch()
    return root


class PeakRSS:
    """Samples the memory (PSS, else RSS) of this process and its children every 20 ms; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()  # PSS: shared pages (torch's libraries) counted once
                    total += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def data_cfg(root: Path, args, **kw) -> DataConfig:
    base = dict(name="imagefolder", root=str(root), recipe="imagenet", image_size=args.image_size,
                batch_size=args.batch_size, val_ratio=0.0, workers=args.workers, cache="none")
    return DataConfig(**{**base, **kw})


def decode_rate(root: Path, args) -> float:
    cfg = data_cfg(root, args, workers=0)
    splits = load_splits(cfg)
    loader = make_loader(splits.train, splits.info, cfg, train=True, device=torch.device("cpu"))
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch)
        if seen >= 512:
            break
    return seen / (time.perf_counter() - start)


def epoch_rate(root: Path, args, cache: str, epochs: int = 2) -> float:
    """Training images/s of the student over the last of ``epochs`` epochs (the first fills an in-memory cache)."""
    cfg = data_cfg(root, args, cache=cache)
    splits = load_splits(cfg)
    loader = make_loader(splits.train, splits.info, cfg, train=True, device=torch.device("cpu"))
    model = create_model(args.model, num_classes=splits.info.num_classes, in_channels=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rate = 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch.images), batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(batch)
        rate = seen / (time.perf_counter() - start)
    return rate


def peak_epoch(root: Path, args) -> int:
    """Peak memory of one streamed training epoch of the student (this process and its DataLoader workers)."""
    with PeakRSS() as peak:
        epoch_rate(root, args, "none", epochs=1)
    return peak.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--out", default=os.path.join("/tmp", "kdlab-data-pipeline"))
    parser.add_argument("--peak", action="store_true", help="also peak RSS on the folder and on one twice its size")
    args = parser.parse_args()
    root = make_images(Path(args.out) / f"n{args.images}", args.images)
    print(f"images {args.images} (256x256 JPEG), image_size {args.image_size}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"decode + RandomResizedCrop, 1 worker (main process): {decode_rate(root, args):.0f} img/s")
    streamed, memory = epoch_rate(root, args, "none"), epoch_rate(root, args, "memory")
    print(f"{args.model} epoch: streamed {streamed:.0f} img/s, in memory {memory:.0f} img/s, "
          f"ratio {streamed / memory:.2f}")
    if args.peak:
        double = make_images(Path(args.out) / f"n{2 * args.images}", 2 * args.images)
        one, two = peak_epoch(root, args), peak_epoch(double, args)
        print(f"peak PSS (incl. workers), one streamed epoch: {one / 2**30:.2f} GiB at {args.images} images, "
              f"{two / 2**30:.2f} GiB at {2 * args.images} (+{100 * (two / one - 1):.1f}%)")


if __name__ == "__main__":
    main()
