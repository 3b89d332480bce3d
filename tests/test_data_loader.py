"""Batch loaders: determinism per (seed, epoch), augmentation correctness, eval order, resizing, stream keys."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import fixtures_data as fd
from kdlab.config import DataConfig
from kdlab.data import DatasetInfo, ImageSet, crop_flip, load_splits, make_loader
from kdlab.errors import DataError

CPU = torch.device("cpu")
INFO3 = DatasetInfo("toy", 10, 3, (8, 8), tuple(str(i) for i in range(10)), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), True)


def toy_set(n: int = 50, c: int = 3, size: int = 8, seed: int = 0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)
    return ImageSet(torch.arange(n) % 10, images=images)


def normalized(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b.images.clone(), b.labels.clone()) for b in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_crop_flip_on_a_hand_made_image():
    image = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    # Padding 1, window at padded (0, 0): shifted down-right by one, zeros enter at the top and left.
    out = crop_flip(image, torch.tensor([[0, 0]]), None, padding=1)
    expected = torch.zeros(4, 4, dtype=torch.uint8)
    expected[1:, 1:] = image[0, 0, :3, :3]
    assert torch.equal(out[0, 0], expected)
    # Window at padded (2, 1): shifted up by one; plus a horizontal flip of the window.
    out = crop_flip(image, torch.tensor([[2, 1]]), torch.tensor([True]), padding=1)
    expected = torch.zeros(4, 4, dtype=torch.uint8)
    expected[:3] = image[0, 0, 1:].flip(-1)
    assert torch.equal(out[0, 0], expected)
    # Centered window, no flip: the identity.
    assert torch.equal(crop_flip(image, torch.tensor([[1, 1]]), torch.tensor([False]), padding=1), image)


def test_crop_flip_matches_a_per_sample_reference():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 9, 7), generator=gen, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (64, 2), generator=gen)
    flips = torch.rand(64, generator=gen) < 0.5
    padded = F.pad(images, (4, 4, 4, 4))
    reference = []
    for img, (top, left), flip in zip(padded, offsets.tolist(), flips.tolist()):
        window = img[:, top:top + 9, left:left + 7]
        reference.append(window.flip(-1) if flip else window)
    assert torch.equal(crop_flip(images, offsets, flips, 4), torch.stack(reference))


def test_train_batches_follow_the_epoch_draws():
    split, cfg = toy_set(), DataConfig(batch_size=16, crop_padding=2)
    loader = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=4)
    loader.set_epoch(3)
    draws = loader.epoch_draws()
    order, offsets, flips = draws.order, draws.offsets, draws.flips
    assert sorted(order.tolist()) == list(range(50)) and offsets.max() <= 4 and flips.dtype == torch.bool
    first = next(iter(loader))
    x, y = first.images, first.labels
    idx = order[:16]
    expected = normalized(crop_flip(split.images[idx], offsets[:16], flips[:16], 2), INFO3)
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, split.labels[idx])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()


def test_same_seed_and_epoch_same_views_other_epoch_or_seed_differs():
    split, cfg = toy_set(), DataConfig(batch_size=16)
    a = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=0)
    b = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=0)
    c = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    first = batches(a)
    assert same(first, batches(a)) and same(first, batches(b))
    assert not same(first, batches(c))
    a.set_epoch(1)
    assert not same(first, batches(a))
    assert a.stream_key == b.stream_key != c.stream_key


def test_resuming_at_an_epoch_boundary_is_exact():
    split, cfg = toy_set(), DataConfig(batch_size=16)
    run = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=7)
    seen = []
    for epoch in range(3):
        run.set_epoch(epoch)
        seen.append(batches(run))
    resumed = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=7)
    resumed.set_epoch(2)
    assert same(batches(resumed), seen[2])


def test_augmentation_changes_images_but_keeps_shape():
    split = toy_set()
    plain = make_loader(split, INFO3, DataConfig(batch_size=16, augment=False), train=True, device=CPU, seed=0)
    aug = make_loader(split, INFO3, DataConfig(batch_size=16), train=True, device=CPU, seed=0)
    bp, ba = next(iter(plain)), next(iter(aug))
    (xp, yp), (xa, ya) = (bp.images, bp.labels), (ba.images, ba.labels)
    assert xp.shape == xa.shape == (16, 3, 8, 8) and torch.equal(yp, ya)  # same order: same seed and epoch
    assert not torch.equal(xp, xa)
    assert torch.allclose(xp, normalized(split.images[plain.epoch_draws().order[:16]], INFO3), atol=1e-5)
    assert plain.epoch_draws().offsets is None and plain.stream_key != aug.stream_key


def test_flip_setting():
    split = toy_set()
    no_flip = make_loader(split, INFO3, DataConfig(flip=False), train=True, device=CPU)
    assert no_flip.epoch_draws().flips is None and no_flip.epoch_draws().offsets is not None
    only_flip = make_loader(split, INFO3, DataConfig(crop_padding=0), train=True, device=CPU)
    x = next(iter(only_flip)).images
    draws = only_flip.epoch_draws()
    order, flips = draws.order, draws.flips
    expected = normalized(split.images[order[: len(x)]], INFO3)
    expected[flips[: len(x)]] = expected[flips[: len(x)]].flip(-1)
    assert torch.allclose(x, expected, atol=1e-5)


def test_eval_loader_keeps_every_sample_in_order():
    split = toy_set(n=50)
    loader = make_loader(split, INFO3, DataConfig(eval_batch_size=16), train=False, device=CPU, seed=3)
    assert len(loader) == 4 and loader.num_samples == 50
    got = batches(loader)
    assert [len(y) for _, y in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in got]), split.labels)
    assert torch.allclose(torch.cat([x for x, _ in got]), normalized(split.images, INFO3), atol=1e-5)
    other_seed = make_loader(split, INFO3, DataConfig(eval_batch_size=16), train=False, device=CPU, seed=9)
    assert other_seed.stream_key == loader.stream_key and same(batches(other_seed), got)


def test_train_loader_drops_the_last_incomplete_batch_only_when_there_are_several():
    cfg = DataConfig(batch_size=16)
    loader = make_loader(toy_set(n=50), INFO3, cfg, train=True, device=CPU)
    assert len(loader) == 3 and [len(b) for b in loader] == [16, 16, 16]
    small = make_loader(toy_set(n=10), INFO3, cfg, train=True, device=CPU)
    assert len(small) == 1 and [len(b) for b in small] == [10]
    empty = make_loader(toy_set(n=0), INFO3, cfg, train=False, device=CPU)
    assert len(empty) == 0 and batches(empty) == []


def test_upsampling_to_a_larger_image_size():
    split = toy_set(n=20)
    loader = make_loader(split, INFO3, DataConfig(image_size=32, eval_batch_size=20), train=False, device=CPU)
    x = next(iter(loader)).images
    assert x.shape == (20, 3, 32, 32)
    expected = F.interpolate(normalized(split.images, INFO3), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(x, expected, atol=1e-4)
    train = make_loader(split, INFO3, DataConfig(image_size=32, batch_size=8), train=True, device=CPU)
    assert next(iter(train)).images.shape == (8, 3, 32, 32) and train.stream_key != make_loader(
        split, INFO3, DataConfig(batch_size=8), train=True, device=CPU).stream_key


def test_imagenet_normalization_for_grayscale(tmp_path):
    fd.make_fashion_mnist(tmp_path, n_train=20, n_test=10)
    splits = load_splits(DataConfig(root=str(tmp_path), val_ratio=0.0))
    cfg = DataConfig(normalize="imagenet", eval_batch_size=10)
    x = next(iter(make_loader(splits.test, splits.info, cfg, train=False, device=CPU))).images
    mean, std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3
    expected = (splits.test.images.float() / 255 - mean) / std
    assert x.shape == (10, 1, 28, 28) and torch.allclose(x, expected, atol=1e-5)
    dataset_norm = make_loader(splits.test, splits.info, DataConfig(eval_batch_size=10), train=False, device=CPU)
    assert dataset_norm.stream_key != make_loader(splits.test, splits.info, cfg, train=False, device=CPU).stream_key


def test_on_disk_loader_gives_the_same_views_as_in_memory(tmp_path):
    fd.make_imagefolder(tmp_path, per_class=6)
    splits = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, val_ratio=0.2))
    common = dict(name="imagefolder", image_size=16, batch_size=4, workers=0)
    disk = make_loader(splits.train, splits.info, DataConfig(in_memory=False, **common), train=True, device=CPU)
    memory = make_loader(splits.train, splits.info, DataConfig(in_memory=None, **common), train=True, device=CPU)
    assert not disk.in_memory and memory.in_memory and disk.stream_key == memory.stream_key
    for epoch in (0, 1):
        disk.set_epoch(epoch)
        memory.set_epoch(epoch)
        got = batches(disk)
        assert len(got) == len(disk) == 3 and got[0][0].shape == (4, 3, 16, 16)
        assert same(got, batches(memory))


def test_on_disk_loader_with_worker_processes(tmp_path):
    fd.make_imagefolder(tmp_path, per_class=3)
    splits = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), image_size=12, val_ratio=0.0))
    cfg = DataConfig(name="imagefolder", image_size=12, eval_batch_size=4, in_memory=False, workers=1)
    parallel = batches(make_loader(splits.test, splits.info, cfg, train=False, device=CPU))
    cfg.workers = 0
    assert same(parallel, batches(make_loader(splits.test, splits.info, cfg, train=False, device=CPU)))
    assert sum(len(y) for _, y in parallel) == len(splits.test)


def test_undecodable_image_on_disk_is_a_one_line_data_error(tmp_path):
    fd.make_imagefolder(tmp_path, per_class=3)
    (tmp_path / "val" / "dog" / "0.png").write_bytes(b"truncated")
    with pytest.raises(DataError) as info:  # a small folder: every header is checked when it is listed
        load_splits(DataConfig(name="imagefolder", root=str(tmp_path), val_ratio=0.0))
    assert str(info.value).startswith("cannot decode image ") and "\n" not in str(info.value)


def test_stream_key_covers_the_settings():
    split = toy_set()
    base = make_loader(split, INFO3, DataConfig(), train=True, device=CPU, seed=0).stream_key
    variants = [DataConfig(batch_size=32), DataConfig(crop_padding=2), DataConfig(flip=False),
                DataConfig(augment=False), DataConfig(image_size=16), DataConfig(normalize="imagenet")]
    keys = {make_loader(split, INFO3, cfg, train=True, device=CPU).stream_key for cfg in variants}
    assert base not in keys and len(keys) == len(variants)
    assert make_loader(split, INFO3, DataConfig(), train=True, device=CPU, seed=1).stream_key != base
    assert make_loader(split, INFO3, DataConfig(), train=False, device=CPU).stream_key != base
    assert make_loader(toy_set(seed=1), INFO3, DataConfig(), train=True, device=CPU).stream_key != base
    assert make_loader(split, INFO3, DataConfig(), train=True, device=CPU).stream_key == base


def test_in_memory_batches_are_cheap():
    # One thread: on a shared, busy 2-core machine OpenMP barriers (not this code) dominate small ops at 2 threads.
    torch.set_num_threads(1)
    split = toy_set(n=2048, size=32)
    info = DatasetInfo("toy", 10, 3, (32, 32), INFO3.class_names, INFO3.mean, INFO3.std, True)
    loader = make_loader(split, info, DataConfig(batch_size=256), train=True, device=CPU)
    next(iter(loader))  # warm-up
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    per_batch = (time.perf_counter() - start) / count
    # About 3 ms per batch of 256 CIFAR-sized images; the bound is loose because tests may share the machine.
    assert per_batch < 0.05, f"{per_batch * 1000:.1f} ms per batch of 256"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_device_views_match_cpu():
    split, cfg = toy_set(), DataConfig(batch_size=16, image_size=24)
    cpu = batches(make_loader(split, INFO3, cfg, train=True, device=CPU, seed=2))
    gpu = batches(make_loader(split, INFO3, cfg, train=True, device=torch.device("cuda"), seed=2))
    assert all(x.is_cuda for x, _ in gpu)
    for (x, y), (u, v) in zip(cpu, gpu):
        assert torch.equal(y, v.cpu()) and torch.allclose(x, u.cpu(), atol=1e-4)


def test_batches_carry_each_samples_index_in_the_split():
    split, cfg = toy_set(), DataConfig(batch_size=16)
    for train in (True, False):
        loader = make_loader(split, INFO3, cfg, train=train, device=CPU, seed=3)
        loader.set_epoch(1)
        seen = []
        for batch in loader:
            assert torch.equal(batch.labels, split.labels[batch.index])
            seen.append(batch.index)
        seen = torch.cat(seen)
        assert len(set(seen.tolist())) == len(seen)  # no sample twice within an epoch
        if not train:
            assert torch.equal(seen, torch.arange(len(split)))


def test_fixed_views_are_shared_by_seeds_and_chosen_per_epoch():
    split = toy_set()
    cfg = DataConfig(batch_size=16, fixed_views=3)
    one = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=1)
    two = make_loader(split, INFO3, cfg, train=True, device=CPU, seed=2)
    assert one.views_key == two.views_key and one.stream_key != two.stream_key
    # every view a batch shows is one of the K fixed views of its sample, whatever the seed and epoch
    bank = {k: {int(i): x for b in one.view_batches(k, 7) for i, x in zip(b.index, b.images)} for k in range(3)}
    seen = set()
    for loader in (one, two):
        for epoch in range(3):
            loader.set_epoch(epoch)
            for batch in loader:
                for i, view, image in zip(batch.index, batch.extras["view"], batch.images):
                    assert torch.equal(image, bank[int(view)][int(i)])
                    seen.add(int(view))
    assert seen == {0, 1, 2}
    assert not torch.equal(bank[0][0], bank[1][0]) or not torch.equal(bank[1][0], bank[2][0])
