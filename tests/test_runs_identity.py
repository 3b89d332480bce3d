"""Never stale: a changed dataset (its length, one item, its class's code), a changed image file, and an edited
notebook-defined model or helper each give a new run, or a one-line refusal under a fixed name; none loads the old
result. And the notebook user's loop: changed settings or a fresh random init make a new run, not a refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import kdlab
from kdlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 1, "device": "cpu", "progress": False, "dataset": {"batch_size": 64}}


def _data(n: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    labels[:10] = torch.arange(10)
    return TensorDataset(images, labels), TensorDataset(images[:64], labels[:64])


def test_a_changed_user_dataset_is_a_new_run_or_a_refusal(tmp_path):
    small = kdlab.train("cnn_tiny", _data(512), out_dir=str(tmp_path), **FAST)
    again = kdlab.train("cnn_tiny", _data(512), out_dir=str(tmp_path), **FAST)
    assert again.run_dir == small.run_dir  # the same data: loaded
    bigger = kdlab.train("cnn_tiny", _data(1536), out_dir=str(tmp_path), **FAST)
    assert bigger.run_dir != small.run_dir and bigger.metrics["epochs"] == 1
    train, test = _data(512)
    train.tensors[0][7] += 0.5  # one item changed, same length and labels
    assert kdlab.train("cnn_tiny", (train, test), out_dir=str(tmp_path), **FAST).run_dir != small.run_dir
    kdlab.train("cnn_tiny", _data(512), out_dir=str(tmp_path), name="fixed", **FAST)
    with pytest.raises(ConfigError, match="the data changed"):
        kdlab.train("cnn_tiny", _data(1536), out_dir=str(tmp_path), name="fixed", **FAST)


def test_a_changed_image_file_is_a_new_run(tmp_path):
    from fixtures_data import make_imagefolder

    root = tmp_path / "folder"
    make_imagefolder(root, per_class=6)
    data = {"name": "imagefolder", "root": str(root), "batch_size": 8, "val_ratio": 0.2}
    first = kdlab.train("cnn_tiny", data, out_dir=str(tmp_path / "runs"), epochs=1, device="cpu")
    image = sorted((root / "train").rglob("*.png"))[0]
    from PIL import Image

    Image.new("RGB", Image.open(image).size, (255, 0, 0)).save(image)
    os.utime(image, (1e9, 1e9))
    second = kdlab.train("cnn_tiny", data, out_dir=str(tmp_path / "runs"), epochs=1, device="cpu")
    assert second.run_dir != first.run_dir


def test_settings_and_a_fresh_init_in_a_notebook_loop_make_new_runs(tmp_path):
    data = _data(256)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    first = kdlab.train(net, data, out_dir=str(tmp_path), **FAST)
    other_lr = kdlab.train(net, data, out_dir=str(tmp_path), optim={"lr": 0.01}, **FAST)
    torch.manual_seed(2)
    fresh = kdlab.train(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), data, out_dir=str(tmp_path), **FAST)
    assert len({first.run_dir, other_lr.run_dir, fresh.run_dir}) == 3


NOTEBOOK = '''
import json, sys, torch
from torch import nn
from torch.utils.data import TensorDataset
import kdlab

SCALE = {scale}

def widen(x):
    return x * SCALE

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(widen(x.flatten(1)))

g = torch.Generator().manual_seed(0)
x, y = torch.rand(128, 1, 28, 28, generator=g), torch.arange(128) % 10
run = kdlab.train(Net(), (TensorDataset(x, y), TensorDataset(x[:32], y[:32])), out_dir=sys.argv[1], epochs=1,
                  device="cpu", progress=False, name=sys.argv[2] if len(sys.argv) > 2 else None)
print(json.dumps({{"run_dir": str(run.run_dir)}}))
'''


def _notebook(tmp_path: Path, scale: str, *name: str) -> subprocess.CompletedProcess:
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK.format(scale=scale)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KDLAB_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, str(script), str(tmp_path / "runs"), *name], capture_output=True,
                          text=True, env=env, cwd=tmp_path)


def test_an_edited_helper_of_a_main_script_model_is_a_new_run(tmp_path):
    first = _notebook(tmp_path, "1.0")
    assert first.returncode == 0, first.stderr
    again = _notebook(tmp_path, "1.0")
    assert json.loads(again.stdout.splitlines()[-1]) == json.loads(first.stdout.splitlines()[-1])
    edited = _notebook(tmp_path, "2.0")  # the helper reads another constant: the model computes something else
    assert edited.returncode == 0, edited.stderr
    assert json.loads(edited.stdout.splitlines()[-1]) != json.loads(first.stdout.splitlines()[-1])
    named = _notebook(tmp_path, "1.0", "mine")
    assert named.returncode == 0, named.stderr
    refused = _notebook(tmp_path, "3.0", "mine")
    assert refused.returncode != 0 and "identity.plugins" in refused.stderr


def test_the_experiment_takes_a_trained_teacher_as_a_run_or_a_directory(tmp_path, fmnist):
    data = {"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32}
    teacher = kdlab.train("cnn_tiny", data, epochs=1, out_dir=str(tmp_path / "runs"), device="cpu")
    for given in (teacher, teacher.run_dir):
        exp = kdlab.Experiment(name=f"e-{type(given).__name__}", out_dir=str(tmp_path), dataset=data,
                               teachers=[given], students=[{"name": "cnn_tiny"}], methods=["kd"], seeds=[0],
                               student_schedule={"epochs": 1}, device="cpu")
        summary = exp.run()
        assert not summary["failed"]
        manifest = json.loads((exp.directory / "manifest.json").read_text())
        assert manifest["runs"][0]["checkpoint"] == str(teacher.run_dir / "model.safetensors")
