"""A KD epoch reading the teacher's outputs from the disk bank of fixed views, against the student alone.

    python benchmarks/teacher_bank.py                       # quick: 400 JPEGs, 64 px, resnet20 <- resnet56, K = 2

Generates ``--images`` JPEGs (kept under ``--out``), streams them with the imagenet recipe and ``fixed_views: K``
(``cache=none``, ``--workers`` workers), builds the teacher's bank once (its time and img/s are printed), then times
training epochs of the student: with cross-entropy alone, and with cross-entropy + KD (T = 4) whose teacher logits
come from the memory-mapped bank (``--topk``: 0 keeps every logit, k the top-k). Prints img/s of each and their
ratio (the issue's target: KD with the bank >= 0.9 of the student alone). Epochs alternate (alone, bank, ...)
``--pairs`` times and the median of each kind is kept, to damp a shared machine's noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlab.config import DataConfig
from kdlab.data import load_splits, make_loader
from kdlab.methods.kd import kd_loss
from kdlab.models import create_model
from kdlab.runs.teacher_bank import TeacherViewBank

sys.path.insert(0, str(Path(__file__).parent))
from data_pipeline import make_images  # noqa: E402


def epoch(student: torch.nn.Module, loader, optimizer, bank: TeacherViewBank | None) -> float:
    """One training epoch; returns images/s."""
    student.train()
    seen, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        logits = student(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        if bank is not None:
            loss = loss + kd_loss(logits, bank(0, i, batch), 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--topk", type=int, default=None, help="0: every logit (the default for <= 100 classes)")
    parser.add_argument("--pairs", type=int, default=3, help="(alone, bank) epoch pairs")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "kdlab-bench-bank"))
    args = parser.parse_args()
    torch.manual_seed(0)
    root = make_images(Path(args.out) / "images", args.images)
    cfg = DataConfig(name="imagefolder", root=str(root), recipe="imagenet", image_size=args.image_size,
                     batch_size=64, eval_batch_size=128, val_ratio=0.0, workers=args.workers, cache="none",
                     fixed_views=args.views)
    splits = load_splits(cfg)
    loader = make_loader(splits.train, splits.info, cfg, train=True, device=torch.device("cpu"), seed=0)
    classes = splits.info.num_classes
    teacher = create_model(args.teacher, num_classes=classes, in_channels=3)
    path = Path(args.out) / f"bank-{args.teacher}-{loader.views_key}-{args.topk}"
    bank = TeacherViewBank(path, teacher, loader, torch.device("cpu"), False, False, batch_size=128,
                           teacher_id=args.teacher, topk=args.topk, log=print)
    built = bank.stats.computed_images
    if built:
        print(f"bank: {built} teacher views in {bank.stats.bank_seconds:.1f} s "
              f"({built / bank.stats.bank_seconds:.0f} img/s), {sum(p.stat().st_size for p in path.iterdir())} B")
    student = create_model(args.student, num_classes=classes, in_channels=3)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    alone, banked = [], []
    for e in range(2 * args.pairs):
        loader.set_epoch(e)
        (banked if e % 2 else alone).append(epoch(student, loader, optimizer, bank if e % 2 else None))
        print(f"epoch {e}: {'KD, bank' if e % 2 else 'student alone'} {(banked if e % 2 else alone)[-1]:.1f} img/s")
    a, b = statistics.median(alone), statistics.median(banked)
    print(f"median: student alone {a:.1f} img/s, KD with the disk bank {b:.1f} img/s, ratio {b / a:.3f} "
          f"(target >= 0.9)")
    batch = next(iter(loader))
    logits = student(batch.images).detach()
    start = time.perf_counter()
    for _ in range(50):
        kd_loss(logits, bank(0, 0, batch), 4.0)
    print(f"bank read + KD loss: {(time.perf_counter() - start) / 50 * 1e3:.2f} ms per batch of {len(batch)}")


if __name__ == "__main__":
    main()
