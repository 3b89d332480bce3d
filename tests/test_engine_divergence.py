"""A NaN/inf loss stops a run with one line (the last good checkpoint kept); chance-level runs are flagged."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import kdlab
from kdlab.cli import main
from kdlab.engine.trainer import collapse_reason
from kdlab.errors import DivergenceError

PLUGIN = '''
import torch
from kdlab.methods import Method


class NanLater(Method):
    """Cross-entropy in the first epoch, then a NaN loss from the third step of the second."""

    needs_teacher = False

    def on_epoch_start(self, epoch, epochs):
        self.epoch, self.step = epoch, 0

    def losses(self, ctx):
        self.step += self.training
        bad = self.epoch >= 1 and self.step >= 3
        return {"loss_trap": ctx.logits.sum() * (float("nan") if bad else 0.0)}
'''


def _args(root, out, *extra):
    return ["train", "model=cnn_tiny", f"dataset.root={root}", "epochs=3", "dataset.batch_size=32", f"out_dir={out}",
            "device=cpu", "progress=false", "--import", "trap", "method=trap:NanLater", *extra]


def test_nan_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, fmnist, capsys, monkeypatch):
    (tmp_path / "trap.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    assert main(_args(fmnist, tmp_path / "runs")) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("kdlab: error: training diverged: loss_trap is nan at epoch 2, step 3")
    assert "last good checkpoint: epoch 1" in error and "Traceback" not in captured.err
    assert captured.out == ""  # no JSON with NaN in it, no result at all
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "result.json").exists() and not (run / "model.safetensors").exists()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert json.loads((run / "failure.json").read_text())["part"] == "loss_trap"
    # skipping is opt-in: the run then finishes, and the skipped batches are counted
    assert main(_args(fmnist, tmp_path / "skip", "optim.skip_nonfinite=20")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["skipped_batches"] == 6  # steps 3-5 of epochs 2 and 3 (5 batches an epoch)



def test_divergence_through_the_api_is_an_exception(tmp_path, fmnist, monkeypatch):
    (tmp_path / "trap.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DivergenceError, match="loss_trap is nan at epoch 2"):
        kdlab.train("cnn_tiny", {"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32},
                    method="trap:NanLater", epochs=2, out_dir=str(tmp_path), device="cpu", progress=False,
                    imports=["trap"])


def test_collapse_reason():
    assert collapse_reason({"val_top1": 10.0}, 10).startswith("final val top-1 10.00% is chance level")
    assert collapse_reason({"val_top1": 10.9}, 10) is not None
    assert collapse_reason({"val_top1": 11.5}, 10) is None
    assert collapse_reason({"test_top1": 1.05}, 100) is not None and collapse_reason({"val_top1": 2.5}, 100) is None
    assert collapse_reason({}, 10) is None


class Frozen(nn.Module):
    """Predicts class 0 whatever the input: a collapsed student."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 10)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.arange(10, 0, -1).float())

    def forward(self, x):
        return self.fc(x.mean((1, 2, 3)).unsqueeze(1) * 0)


def test_collapsed_and_diverged_seeds_are_flagged_in_the_report(tmp_path, fmnist):
    exp = kdlab.Experiment(name="flags", out_dir=str(tmp_path), seeds=[0, 1], device="cpu", progress=False,
                           dataset={"name": "fashion_mnist", "root": str(fmnist), "batch_size": 32},
                           teachers=[{"name": "cnn_tiny"}], students=[Frozen()], methods=["kd"],
                           teacher_schedule={"epochs": 1}, student_schedule={"epochs": 1, "optim": {"lr": 0.0}})
    summary = exp.run()
    assert not summary["failed"]
    rows = {row["label"]: row for row in exp.report().rows}
    assert rows["Frozen (baseline)"]["flags"] == "collapsed to chance in 2/2 seed(s)"
    assert rows["kd: cnn_tiny → Frozen"]["n_collapsed"] == 2 and rows["Frozen (baseline)"]["n_diverged"] == 0
    html = (exp.directory / "report" / "index.html").read_text()
    assert "flagged" in html and "collapsed to chance in 2/2 seed(s)" in html
