"""``dataset.skip_bad_files=true``: the bad files a run left out are counted once in its meta.json and result.json
(train and test; the validation split is carved from the training folder, so it adds none twice)."""

from __future__ import annotations

import json

import numpy as np
from fixtures_data import make_imagefolder
from PIL import Image

import kdlab


def test_skipped_files_are_recorded_once(tmp_path):
    root = make_imagefolder(tmp_path / "folder", per_class=6, size=(40, 52))
    good = (root / "train" / "cat" / "1.JPG").read_bytes()
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    train_bad = {"empty.jpg": b"", "text.png": b"not an image", "tiny.png": tiny.read_bytes(),
                 "truncated.jpg": good[: len(good) // 2]}  # three left out at listing, one while streamed
    for name, payload in train_bad.items():
        (root / "train" / "dog" / name).write_bytes(payload)
    (root / "val" / "fox" / "empty.jpg").write_bytes(b"")  # the test split's folder
    data = {"name": "imagefolder", "root": str(root), "image_size": 32, "batch_size": 4, "val_ratio": 0.25,
            "cache": "none", "workers": 0, "skip_bad_files": True}
    trained = kdlab.train("cnn_tiny", data, epochs=1, out_dir=str(tmp_path / "runs"), device="cpu", progress=False)
    run = trained.run_dir
    assert trained.metrics["skipped_files"] == 5
    assert json.loads((run / "result.json").read_text())["skipped_files"] == 5
    assert json.loads((run / "meta.json").read_text())["skipped_files"] == 5
