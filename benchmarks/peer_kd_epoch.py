#!/usr/bin/env python
"""One KD epoch, kdlab against a peer framework, side by side (issue 13): resnet56 -> resnet20, Fashion-MNIST
(padded to 32x32 and repeated to 3 channels, the CIFAR shape both frameworks' models take), batch 64, SGD, KD with
T = 4 (0.1·CE + 0.9·KL), the same number of threads, one process at a time.

The peer is RepDistiller (github.com/HobbitLong/RepDistiller), the reference code of the CRD paper and the base of
many KD repositories. Its code is not part of kdlab: point ``--peer-root`` at a checkout of it. This script imports
its ``models.model_dict``, ``distiller_zoo.DistillKL`` and its training loop ``helper.loops.train_distill`` and runs
them unchanged. Its data pipeline (torchvision's per-sample RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize in DataLoader workers) cannot run here (torchvision needs a CUDA build of torch), so the same
per-sample steps are done in a Dataset of torch operations with the same number of workers as threads.

    .venv/bin/python benchmarks/peer_kd_epoch.py --peer-root /path/to/RepDistiller --images 12800

Both frameworks train on the same first ``--images`` training images; the teacher has random weights in both
(speed does not depend on them). The last line of stdout is one JSON object: img/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    import kdlab  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import kdlab  # noqa: E402
from kdlab.config import DataConfig  # noqa: E402
from kdlab.data import load_splits  # noqa: E402


class PeerCifarStyle(Dataset):
    """(image, label, index) with RepDistiller's CIFAR training transforms, one sample at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = torch.nn.functional.pad(self.images[i], (2, 2, 2, 2)).repeat(3, 1, 1)  # 28 -> 32, grey -> RGB
        padded = torch.nn.functional.pad(img, (4, 4, 4, 4))  # RandomCrop(32, padding=4)
        top, left = torch.randint(0, 9, (2,)).tolist()
        img = padded[:, top:top + 32, left:left + 32]
        if torch.rand(()) < 0.5:  # RandomHorizontalFlip
            img = img.flip(-1)
        img = img.float() / 255.0  # ToTensor
        return (img - self.mean) / self.std, int(self.labels[i]), i  # Normalize


def run_peer(root: Path, splits, args) -> float:
    sys.path.insert(0, str(root))
    from distiller_zoo import DistillKL  # noqa: E402  (the peer's own code)
    from helper.loops import train_distill  # noqa: E402
    from models import model_dict  # noqa: E402

    torch.manual_seed(0)
    model_s, model_t = model_dict["resnet20"](num_classes=10), model_dict["resnet56"](num_classes=10)
    module_list = nn.ModuleList([model_s, model_t])
    criteria = nn.ModuleList([nn.CrossEntropyLoss(), DistillKL(4), DistillKL(4)])
    optimizer = torch.optim.SGD(model_s.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt = types.SimpleNamespace(distill="kd", gamma=0.1, alpha=0.9, beta=0.0, print_freq=10**9)
    train = splits.train
    data = PeerCifarStyle(train.images[:args.images, 0], train.labels[:args.images], splits.info.mean[0],
                          splits.info.std[0])
    loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=args.threads, drop_last=True)
    start = time.perf_counter()
    train_distill(0, loader, module_list, criteria, optimizer, opt)
    return len(loader) * 64 / (time.perf_counter() - start)


def run_kdlab(root: str | None, args) -> float:
    torch.manual_seed(0)
    teacher = kdlab.create_model("resnet56", num_classes=10, in_channels=3)
    data = {"name": "fashion_mnist", "batch_size": 64, "pad": 2, "channels": 3, "val_ratio": 0.0,
            "train_subset": args.images, "test_subset": 64, **({"root": root} if root else {})}
    with tempfile.TemporaryDirectory() as out:
        run = kdlab.distill("resnet20", teacher, method={"name": "kd", "T": 4, "alpha": 0.9}, data=data, epochs=1,
                            out_dir=out, progress=False, threads=args.threads, optim={"lr": 0.05})
        return run.history[0]["train_img_s"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-root", required=True, help="a checkout of HobbitLong/RepDistiller")
    p.add_argument("--images", type=int, default=12800, help="training images of the epoch (a multiple of 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: kdlab's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = load_splits(DataConfig(root=args.data_root, val_ratio=0.0))
    kdlab_img_s = run_kdlab(args.data_root, args)
    peer_img_s = run_peer(Path(args.peer_root), splits, args)
    result = {"kdlab_img_s": round(kdlab_img_s, 1), "peer_img_s": round(peer_img_s, 1),
              "kdlab_over_peer": round(kdlab_img_s / peer_img_s, 2), "images": args.images, "threads": args.threads,
              "peer": "RepDistiller train_distill", "precision_kdlab": "auto (bf16 where the CPU does it, else fp32)"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
