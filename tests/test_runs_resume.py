"""Killing a run with SIGKILL mid-training and running the same command again gives the uninterrupted result."""

import json
import signal
import subprocess
import sys
import time

from fixtures_data import make_fashion_mnist

TIMING = ("img_s", "time_s", "run_dir")


def _command(root, out, name):
    return [sys.executable, "-m", "kdlab", "train", "model=cnn_tiny", f"dataset.root={root}", "epochs=4",
            "dataset.batch_size=16", "optim.warmup_epochs=0.5", f"out_dir={out}", f"name={name}", "progress=false",
            "device=cpu"]


def _comparable(row):
    return {k: v for k, v in row.items() if not k.endswith(TIMING)}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    root = tmp_path / "fmnist"
    make_fashion_mnist(root, n_train=1500, n_test=200)
    reference = subprocess.run(_command(root, tmp_path, "ref"), capture_output=True, text=True, check=True)
    expected = json.loads(reference.stdout.strip().splitlines()[-1])

    proc = subprocess.Popen(_command(root, tmp_path, "cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pointer = tmp_path / "cut" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while not pointer.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "cut" / "result.json").exists()

    resumed = subprocess.run(_command(root, tmp_path, "cut"), capture_output=True, text=True, check=True)
    assert "resuming" in resumed.stderr
    got = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert _comparable(got) == _comparable(expected)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [_comparable(r) for r in rows] == [_comparable(r) for r in ref_rows]
