"""The teacher's outputs for K fixed views, paid once on disk for any data: streamed image folders (imagenet and
small recipes) and a user's Dataset that lets kdlab draw its views; resumable, keyed, full or top-k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import kdlab
from kdlab.config import DataConfig, TrainConfig, from_dict
from kdlab.data import DatasetInfo, load_splits, make_loader
from kdlab.data.custom import as_split
from kdlab.runs.teacher_bank import TeacherViewBank, topk_logits
from kdlab.runs.train import run as train_run

from fixtures_data import make_imagefolder

CPU = torch.device("cpu")


def tiny_teacher(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes)).eval()


class Stops(nn.Module):
    """A teacher killed after ``after`` forward passes (a build interrupted mid-way)."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt("killed")
        return self.inner(x)


def folder_loader(tmp_path: Path, recipe: str = "imagenet", views: int = 2, seed: int = 0, **kw):
    root = tmp_path / "folder"
    if not root.is_dir():
        make_imagefolder(root, per_class=6)
    cfg = DataConfig(name="imagefolder", root=str(root), recipe=recipe, image_size=16, batch_size=4,
                     eval_batch_size=5, val_ratio=0.0, workers=0, cache="none", fixed_views=views, **kw)
    splits = load_splits(cfg)
    return make_loader(splits.train, splits.info, cfg, train=True, device=CPU, seed=seed)


def bank(path: Path, teacher: nn.Module, loader, **kw) -> TeacherViewBank:
    return TeacherViewBank(path, teacher, loader, CPU, False, False, batch_size=5, **{"teacher_id": "t", **kw})


@pytest.mark.parametrize("recipe", ["imagenet", "small"])
def test_bank_logits_are_the_live_teachers_on_the_same_views_for_every_seed(tmp_path, recipe):
    teacher = tiny_teacher()
    one = folder_loader(tmp_path, recipe, seed=1)
    built = bank(tmp_path / "bank", teacher, one)
    assert built.stats.computed_images == 2 * one.num_samples and not (tmp_path / "bank.partial").exists()
    for seed in (1, 2):
        loader = folder_loader(tmp_path, recipe, seed=seed)
        again = bank(tmp_path / "bank", teacher, loader)
        assert again.stats.computed_batches == 0  # paid once: every seed reads it
        views = set()
        for epoch in range(3):
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                with torch.no_grad():
                    live = teacher(batch.images)
                torch.testing.assert_close(again(epoch, i, batch), live, atol=2e-3, rtol=1e-3)
                views |= set(batch.extras["view"].tolist())
        assert views == {0, 1}


def test_imagenet_fixed_views_differ_per_view_and_not_per_seed(tmp_path):
    a, b = folder_loader(tmp_path, seed=1), folder_loader(tmp_path, seed=2)
    assert a.views_key == b.views_key
    first = [torch.cat([x.images for x in a.view_batches(k, 5)]) for k in range(2)]
    assert torch.equal(first[0], torch.cat([x.images for x in b.view_batches(0, 5)]))
    assert not torch.equal(first[0], first[1])


def test_a_kd_run_with_the_bank_equals_the_live_teacher_on_the_same_views(tmp_path):
    root = make_imagefolder(tmp_path / "folder", per_class=8)
    data = {"name": "imagefolder", "root": str(root), "recipe": "imagenet", "image_size": 16, "batch_size": 4,
            "val_ratio": 0.25, "workers": 0, "cache": "none", "fixed_views": 2}
    teacher = kdlab.train("cnn_tiny", dict(data, fixed_views=0), epochs=1, device="cpu", progress=False,
                          precision="fp32", out_dir=str(tmp_path / "t"), name="teacher")
    opened: list = []

    def factory(loader, model):
        opened.append(bank(tmp_path / "bank", model, loader))
        return opened[-1]

    histories = []
    for name, cache in (("live", None), ("bank", factory)):
        cfg = from_dict(TrainConfig, {"model": {"name": "cnn_tiny"}, "dataset": data, "method": {"name": "kd"},
                                      "teacher": str(teacher.run_dir), "epochs": 2, "device": "cpu",
                                      "precision": "fp32", "progress": False, "out_dir": str(tmp_path / name)})
        result = train_run(cfg, teacher_cache=cache)
        histories.append([json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").open()])
    assert opened and opened[0].stats.reused_batches == 2 * (18 // 4)
    for live, banked in zip(*histories):
        assert live["train_loss"] == pytest.approx(banked["train_loss"], rel=2e-3, abs=2e-3)


def test_a_killed_build_resumes_and_equals_an_uninterrupted_one(tmp_path):
    teacher, loader = tiny_teacher(), folder_loader(tmp_path, views=3)
    whole = bank(tmp_path / "whole", teacher, loader)
    with pytest.raises(KeyboardInterrupt):
        bank(tmp_path / "bank", Stops(teacher, after=5), loader)
    assert not (tmp_path / "bank").exists()
    assert len(json.loads((tmp_path / "bank.partial" / "done.json").read_text())) == 5
    lines: list[str] = []
    resumed = bank(tmp_path / "bank", teacher, loader, log=lines.append, progress_every=25)
    chunks = 3 * -(-loader.num_samples // 5)
    assert resumed.stats.computed_batches == chunks - 5
    assert any("resuming, 5/" in line for line in lines) and any("img/s" in line and "ETA" in line for line in lines)
    assert not (tmp_path / "bank.partial").exists()
    assert np.array_equal(np.load(tmp_path / "bank" / "logits.npy"), np.load(tmp_path / "whole" / "logits.npy"))
    assert whole.key == resumed.key


def test_a_bank_of_another_key_is_rebuilt_never_used(tmp_path):
    loader = folder_loader(tmp_path)
    first = bank(tmp_path / "bank", tiny_teacher(seed=0), loader, teacher_id="a")
    other = tiny_teacher(seed=1)
    second = bank(tmp_path / "bank", other, loader, teacher_id="b")  # another teacher at the same path
    assert first.stats.computed_batches and second.stats.computed_batches == first.stats.computed_batches
    assert json.loads((tmp_path / "bank" / "key.json").read_text())["teacher"] == "b"
    batch = next(iter(loader))
    with torch.no_grad():
        torch.testing.assert_close(second(0, 0, batch), other(batch.images), atol=2e-3, rtol=1e-3)
    key = json.loads((tmp_path / "bank" / "key.json").read_text())
    (tmp_path / "bank" / "key.json").write_text(json.dumps({**key, "views": "tampered"}))
    assert bank(tmp_path / "bank", other, loader, teacher_id="b").stats.computed_batches > 0
    # a partial build of another key is thrown away too
    with pytest.raises(KeyboardInterrupt):
        bank(tmp_path / "p", Stops(other, 2), loader, teacher_id="b")
    assert bank(tmp_path / "p", other, loader, teacher_id="c").stats.computed_batches == first.stats.computed_batches


def test_top_k_keeps_the_largest_logits_and_probabilities_summing_to_one(tmp_path):
    teacher, loader = tiny_teacher(classes=150), folder_loader(tmp_path)
    built = bank(tmp_path / "bank", teacher, loader, num_classes=150)  # > 100 classes: top-10 by default
    assert built.key["topk"] == 10 and np.load(tmp_path / "bank" / "indices.npy").dtype == np.int16
    batch = next(iter(loader))
    with torch.no_grad():
        live = teacher(batch.images)
    rebuilt = built(0, 0, batch)
    probs, true = rebuilt.softmax(1), live.softmax(1)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(batch)))
    top = live.topk(10, dim=1).indices
    torch.testing.assert_close(probs.gather(1, top), true.gather(1, top), atol=1e-3, rtol=5e-3)
    torch.testing.assert_close(rebuilt.gather(1, top), live.gather(1, top), atol=2e-3, rtol=1e-3)
    # the other classes share the rest of the mass equally
    rest = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top, False)
    others = probs[rest].view(len(batch), -1)
    torch.testing.assert_close(others, others[:, :1].expand_as(others))
    values, indices = live.topk(3, dim=1)  # the function alone: kept logits as they are, finite elsewhere
    direct = topk_logits(values, indices, torch.logsumexp(live, 1), 150)
    assert torch.equal(direct.gather(1, indices), values) and torch.isfinite(direct).all()


class Jitter(Dataset):
    """A user's Dataset with its own randomness (noise), opting in through ``kdlab_view``."""

    def __init__(self, n: int = 24) -> None:
        self.images = torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(0))
        self.targets = [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.kdlab_view(index, None)

    def kdlab_view(self, index: int, generator: torch.Generator | None):
        noise = torch.rand(3, 12, 12, generator=generator) * 0.5
        return self.images[index] + noise, self.targets[index]


def test_a_users_dataset_with_kdlab_view_shares_the_bank(tmp_path):
    split = as_split(Jitter())
    info = DatasetInfo("jitter", 3, 3, (12, 12), ("a", "b", "c"), (0.0,) * 3, (1.0,) * 3, False)
    cfg = DataConfig(batch_size=8, fixed_views=2)
    loaders = [make_loader(split, info, cfg, train=True, device=CPU, seed=s) for s in (1, 2)]
    assert loaders[0].views_key == loaders[1].views_key and loaders[0].stream_key is not None
    teacher = tiny_teacher()
    first = bank(tmp_path / "bank", teacher, loaders[0])
    assert first.stats.computed_images == 2 * 24
    for loader in loaders:
        shared = bank(tmp_path / "bank", teacher, loader)
        assert shared.stats.computed_batches == 0
        for epoch in range(2):
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                with torch.no_grad():
                    torch.testing.assert_close(shared(epoch, i, batch), teacher(batch.images), atol=2e-3, rtol=1e-3)
    plain = make_loader(as_split(Jitter()), info, DataConfig(batch_size=8), train=True, device=CPU)
    assert plain.fixed_views == 0 and plain.stream_key is None  # without fixed_views: the teacher runs live
