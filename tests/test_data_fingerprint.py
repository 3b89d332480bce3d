"""Data fingerprints (kdlab.data.fingerprint) and code identity (kdlab.codeid): what changes them, what does not, the
cost on a large Dataset; the API's input mistakes on user Datasets (dict samples, float labels, shuffle, empty)."""

from __future__ import annotations

import sys
import textwrap
import time
import types

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import kdlab
from kdlab.codeid import code_identity
from kdlab.config import DataConfig
from kdlab.data import load_splits
from kdlab.data.fingerprint import data_fingerprint, dataset_fingerprint
from kdlab.errors import DataError
from kdlab.runs.live import object_hash

COMMON = {"epochs": 1, "device": "cpu", "progress": False, "precision": "fp32"}


class Toy(Dataset):
    """n grey 8x8 images from ``seed``; ``labels`` as given; item ``edit`` brightened; ``noise``: random each read."""

    def __init__(self, n: int = 64, seed: int = 0, shift: int = 0, edit: int | None = None, noise: bool = False):
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 200, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
        if edit is not None:
            self.images[edit] += 1
        self.targets = [(i + shift) % 4 for i in range(n)]
        self.noise = noise

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.noise:  # augmentation from torch's RNG: the fingerprint reads it under a fixed seed
            image = image + torch.randint(0, 3, image.shape, dtype=torch.uint8)
        return image, self.targets[i]


class Untargeted(Toy):
    """No ``targets`` attribute: labels are read from the items (all below 20k, sampled above)."""

    def __init__(self, n: int, **kwargs):
        super().__init__(min(n, 64), **kwargs)
        self.n = n
        del self.targets

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i % 64], i % 4


def test_identical_keeps_and_changes_change_the_fingerprint():
    base = dataset_fingerprint(Toy())
    assert dataset_fingerprint(Toy()) == base
    assert dataset_fingerprint(Toy(n=65)) != base  # length
    assert dataset_fingerprint(Toy(edit=0)) != base  # one item's content (item 0 is always sampled)
    assert dataset_fingerprint(Toy(shift=1)) != base  # labels
    assert dataset_fingerprint(Toy(noise=True)) == dataset_fingerprint(Toy(noise=True))  # random views: stable
    assert dataset_fingerprint(DataLoader(Toy(), batch_size=8)) != dataset_fingerprint(DataLoader(Toy(), batch_size=16))


def test_every_member_of_a_tuple_and_dict_counts():
    assert data_fingerprint((Toy(), Toy(seed=1))) != data_fingerprint((Toy(), Toy(seed=2)))
    assert data_fingerprint({"train": Toy(), "test": Toy(seed=1)}) == data_fingerprint({"train": Toy(),
                                                                                        "test": Toy(seed=1)})
    assert data_fingerprint((Toy(), Toy(seed=1))) != data_fingerprint((Toy(seed=1), Toy()))


def test_load_splits_fingerprint_covers_train_val_and_test():
    cfg = DataConfig(name="toy")
    base = load_splits(cfg, data=(Toy(), Toy(seed=1))).fingerprint
    assert load_splits(cfg, data=(Toy(), Toy(seed=1))).fingerprint == base
    assert load_splits(cfg, data=(Toy(), Toy(seed=1, edit=0))).fingerprint != base  # test
    assert load_splits(cfg, data=(Toy(), Toy(seed=3), Toy(seed=1))).fingerprint != base  # an explicit val
    assert load_splits(cfg, data=(Toy(n=512), Toy(seed=1))).fingerprint != load_splits(
        cfg, data=(Toy(n=1536), Toy(seed=1))).fingerprint  # the issue: 512 vs 1,536 images


def test_a_large_dataset_is_fingerprinted_from_a_sample_quickly():
    big = Untargeted(200_000)
    start = time.perf_counter()
    first = dataset_fingerprint(big)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, elapsed
    assert dataset_fingerprint(big) == first and dataset_fingerprint(Untargeted(200_001)) != first
    assert dataset_fingerprint(Untargeted(1000)) != dataset_fingerprint(Untargeted(1000, seed=1))


NOTEBOOK = '''
import torch
from torch import nn

WIDTH = {width}


def helper(x):
    return x * {factor}


def unrelated():
    return {unrelated}


class Block(nn.Module):
    def forward(self, x):
        return helper(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x):
        return self.head(self.block(x))
'''


def notebook_net(monkeypatch, width=4, factor=2, unrelated=0):
    """``Net`` defined by exec-ing code in a module without a file (as a notebook cell defines it)."""
    module = types.ModuleType("nb_fake_main")
    monkeypatch.setitem(sys.modules, "nb_fake_main", module)
    exec(compile(textwrap.dedent(NOTEBOOK.format(width=width, factor=factor, unrelated=unrelated)), "<cell>", "exec"),
         module.__dict__)
    return module.Net


def test_notebook_code_identity_follows_helpers_and_globals(monkeypatch):
    base = code_identity(notebook_net(monkeypatch))
    assert code_identity(notebook_net(monkeypatch)) == base
    assert code_identity(notebook_net(monkeypatch, factor=3)) != base  # a helper the model calls, edited
    assert code_identity(notebook_net(monkeypatch, width=8)) != base  # a simple global it reads
    assert code_identity(notebook_net(monkeypatch, unrelated=1)) == base  # a function it never reaches
    net, edited = notebook_net(monkeypatch)(), notebook_net(monkeypatch, factor=3)()
    assert object_hash(net) != object_hash(edited)  # the run identity of a live model follows


def test_file_module_code_identity_is_its_file():
    import kdlab.data.custom as custom

    assert code_identity(custom.DatasetSplit) == code_identity(custom.as_split) == code_identity(custom)


def test_class_source_changes_the_fingerprint(monkeypatch):
    def make(body: str):
        module = types.ModuleType("nb_fake_data")
        monkeypatch.setitem(sys.modules, "nb_fake_data", module)
        exec(f"class Data(list):\n    def __getitem__(self, i):\n        return {body}\n", module.__dict__)
        return module.Data([(torch.zeros(1, 2, 2, dtype=torch.uint8), 0)] * 4)

    assert dataset_fingerprint(make("list.__getitem__(self, i)")) != dataset_fingerprint(
        make("list.__getitem__(self, -1 - i)"))


class Dicts(Dataset):
    def __init__(self, n: int = 40, key: str = "image", label=lambda i: i % 2):
        self.n, self.key, self.label = n, key, label

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {self.key: torch.full((1, 8, 8), float(i % 2)), "label": self.label(i), "id": i}


def test_dict_samples_train(tmp_path):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    run = kdlab.train(model, (Dicts(), Dicts(16)), out_dir=str(tmp_path), **COMMON)
    assert "test_top1" in run.metrics
    splits = load_splits(DataConfig(name="d", image_column="pixels"), data=Dicts(key="pixels"))
    assert splits.train.sample(0)[0].shape == (1, 8, 8)
    with pytest.raises(DataError, match="no image key 'image' or 'img'.*pixels"):
        load_splits(DataConfig(name="d"), data=Dicts(key="pixels"))


def test_float_labels_integral_accepted_fractional_refused():
    assert load_splits(DataConfig(name="d"), data=Dicts(label=lambda i: float(i % 2))).info.num_classes == 2
    with pytest.raises(DataError, match="labels must be class indices"):
        load_splits(DataConfig(name="d"), data=Dicts(label=lambda i: 0.5 * (i % 2)))


def test_shuffled_loader_warns_and_empty_train_is_refused():
    with pytest.warns(UserWarning, match=r"draws its own order from \(seed, epoch\)"):
        load_splits(DataConfig(name="d"), data=DataLoader(Toy(), batch_size=8, shuffle=True))
    with pytest.raises(DataError, match="training split is empty"):
        load_splits(DataConfig(name="d"), data=(Toy(n=0), Toy()))
