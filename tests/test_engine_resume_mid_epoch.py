"""A run killed after a mid-epoch checkpoint and resumed ends with exactly the weights and metrics of an
uninterrupted run: in-memory data, a streamed image folder and a user Dataset (whose transform draws from torch's
RNG); the student has dropout, so torch's global RNG must be restored exactly where the epoch had it."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_data import make_imagefolder
from torch import nn

from kdlab.config import DataConfig, OptimConfig
from kdlab.data import load_splits, make_loader
from kdlab.engine.checkpoint import load_state
from kdlab.engine.resume import CheckpointClock
from kdlab.engine.runio import RunIO
from kdlab.engine.trainer import EngineOptions, Trainer
from kdlab.files import load_weights
from kdlab.methods import build_method

CPU = torch.device("cpu")
TIMING = ("img_s", "time_s", "run_dir")


class Killed(Exception):
    pass


class KillAt:
    """A teacher-logit provider (the trainer's per-batch hook) that gives none, and stops the run at one batch."""

    def __init__(self, at: tuple[int, int] | None = None) -> None:
        self.at, self.seen = at, []

    def __call__(self, epoch, index, batch):
        self.seen.append((epoch, index))
        if (epoch, index) == self.at:
            raise Killed(f"killed at epoch {epoch}, batch {index}")
        return None


def _student(channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(96, classes))


def _trainer(cfg: DataConfig, run_dir, every_s: float, hook: KillAt, data=None, init_seed: int = 0) -> Trainer:
    splits = load_splits(cfg, data=data)
    torch.manual_seed(init_seed)
    method = build_method("ce", None, _student(splits.info.in_channels, splits.info.num_classes))
    train = make_loader(splits.train, splits.info, cfg, train=True, device=CPU, seed=1)
    evals = {s: make_loader(getattr(splits, s), splits.info, cfg, train=False, device=CPU) for s in ("val", "test")}
    options = EngineOptions(epochs=2, optim=OptimConfig(lr=0.05, warmup_epochs=0.5), device=CPU,
                            channels_last=False, model_meta={"num_classes": splits.info.num_classes},
                            checkpoint_every_s=every_s)
    torch.manual_seed(123)  # the global RNG the run starts with (dropout draws from it)
    return Trainer(method, train, evals, options, RunIO(run_dir, progress=False), teacher_cache=hook)


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.endswith(TIMING)}


def _rows(run_dir) -> list[dict]:
    return [_comparable(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kill_and_resume(tmp_path, cfg: DataConfig, at: tuple[int, int], data=None) -> None:
    reference = _trainer(cfg, tmp_path / "ref", 0, KillAt(), data).fit()
    assert not (tmp_path / "ref" / "checkpoints" / "epoch-0001-batch-000001").exists()  # 0: epoch ends only

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        _trainer(cfg, cut, 1e-9, KillAt(at), data).fit()  # a checkpoint after every batch
    pointer = json.loads((cut / "checkpoints" / "latest.json").read_text())
    epoch, batch = at
    assert (pointer["epoch"], pointer["batch"]) == at and pointer["dir"] == f"epoch-{epoch:04d}-batch-{batch:06d}"
    assert pointer["previous"]["batch"] == batch - 1 and set(pointer["sha256"]) == {"weights.safetensors", "state.pt"}
    state = load_state(cut / "checkpoints" / pointer["dir"] / "state.pt")  # weights_only=True
    assert state["progress"]["batch"] == batch and state["progress"]["seen"] > 0

    hook = KillAt()
    resumed = _trainer(cfg, cut, 0, hook, data, init_seed=7).fit()  # other initial weights: all come from the file
    assert hook.seen[0] == at  # the epoch continued at the batch after the checkpoint, with its index
    assert _comparable(resumed) == _comparable(reference)
    assert _rows(cut) == _rows(tmp_path / "ref")
    got, want = load_weights(cut / "model.safetensors")[0], load_weights(tmp_path / "ref" / "model.safetensors")[0]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("at", [(0, 4), (1, 2)])
def test_in_memory_run_resumes_mid_epoch_exactly(tmp_path, fmnist, at):
    cfg = DataConfig(name="fashion_mnist", root=str(fmnist), batch_size=16, eval_batch_size=64, train_subset=160)
    _kill_and_resume(tmp_path, cfg, at)


def test_streamed_image_folder_resumes_mid_epoch_exactly(tmp_path):
    root = make_imagefolder(tmp_path / "folder", per_class=6, size=(40, 52))
    cfg = DataConfig(name="imagefolder", root=str(root), recipe="imagenet", image_size=32, batch_size=4,
                     eval_batch_size=8, val_ratio=0.0, workers=0, cache="none", cache_dir=str(tmp_path / "cache"))
    _kill_and_resume(tmp_path, cfg, (1, 2))


class NoisyDataset(torch.utils.data.Dataset):
    """A user Dataset whose transform draws from torch's global RNG (as torchvision transforms do)."""

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, 8, 8, generator=gen)
        self.targets = [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i] + 0.1 * torch.randn(1, 8, 8), self.targets[i]


def test_user_dataset_resumes_mid_epoch_exactly(tmp_path):
    data = (NoisyDataset(48, 0), NoisyDataset(12, 1))
    cfg = DataConfig(name="mine", batch_size=8, eval_batch_size=12, val_ratio=0.0, workers=0)
    _kill_and_resume(tmp_path, cfg, (1, 3), data=data)


def test_checkpoint_clock():
    now = [0.0]
    clock = CheckpointClock(10.0, now=lambda: now[0])
    assert not clock.due(1)
    now[0] = 10.0
    assert clock.due(2)
    clock.reset()
    assert not clock.due(3)
    assert not CheckpointClock(0.0).due(1)  # 0: epoch ends only
