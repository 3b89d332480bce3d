"""MLflow tracking against a real server: a tracked run's params, per-epoch metrics, final metrics and artifacts;
an experiment directory becomes a parent run; a lost server warns once and the run still finishes. Also: a log file
gets whole lines, no progress-bar frames."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="tracking tests need the mlflow package (pip install 'kdlab[mlflow]')")

from mlflow.tracking import MlflowClient  # noqa: E402

from kdlab.engine.tracking import flatten, log_experiment  # noqa: E402

EPOCHS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` over SQLite, serving its artifacts from ``tmp/artifacts``; returns it once /health answers."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "wb"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited: {(tmp / 'server.log').read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
                if answer.status == 200:
                    return server, uri
        except OSError:
            time.sleep(0.3)
    _stop(server)
    pytest.fail("mlflow server did not answer within 45 s")


def _stop(server: subprocess.Popen) -> None:
    """The server and the workers it started (its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _train(root: Path, out: Path, uri: str, log: Path) -> subprocess.CompletedProcess:
    """``kdlab train`` of a tiny run with tracking, stderr to a file (as under nohup or CI), progress on."""
    env = {k: v for k, v in os.environ.items() if k != "KDLAB_NO_PROGRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-m", "kdlab", "train", "model=cnn_tiny", f"dataset.root={root}", f"epochs={EPOCHS}",
            "dataset.batch_size=32", f"out_dir={out}", "device=cpu", "tracking=mlflow", f"tracking_uri={uri}"]
    with open(log, "wb") as err:
        return subprocess.run(args, stdout=subprocess.PIPE, stderr=err, env=env, timeout=120)


def test_run_is_tracked_and_a_lost_server_only_warns(tmp_path, fmnist):
    server, uri = _start_server(tmp_path)
    try:
        done = _train(fmnist, tmp_path / "runs", uri, tmp_path / "log1.txt")
        log = (tmp_path / "log1.txt").read_bytes()
        assert done.returncode == 0, log.decode()[-2000:]
        assert len(done.stdout.decode().strip().splitlines()) == 1  # stdout: the JSON result only (MLflow's URLs
        result = json.loads(done.stdout.decode())                    # are kept off it)
        run_dir = Path(result["run_dir"])
        record = json.loads((run_dir / "tracking.json").read_text())
        client = MlflowClient(uri)
        run = client.get_run(record["run_id"])
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["model.name"] == "cnn_tiny" and params["epochs"] == str(EPOCHS)
        assert params["optim.lr"] == "0.1" and params["tracking"] == "mlflow"
        history = client.get_metric_history(run.info.run_id, "val_top1")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == EPOCHS
        assert run.data.metrics["final_selected_val_top1"] == pytest.approx(result["selected_val_top1"])
        assert run.data.metrics["final_test_top1"] == pytest.approx(result["test_top1"])
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.safetensors", "result.json"}
        # quiet logs: no carriage-return frames in a log file, a few lines per epoch
        assert b"\r" not in log and len(log) < 3000 and len(log.splitlines()) <= 3 + 2 * EPOCHS, log.decode()

        _check_parent_run(tmp_path / "exp", client, uri)
    finally:
        _stop(server)
    started = time.monotonic()
    done = _train(fmnist, tmp_path / "runs2", uri, tmp_path / "log2.txt")
    log = (tmp_path / "log2.txt").read_text()
    assert done.returncode == 0, log[-2000:]
    warnings = [line for line in log.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow tracking at"), log
    assert time.monotonic() - started < 60


def _check_parent_run(exp: Path, client: MlflowClient, uri: str) -> None:
    """An experiment directory: its config as params, manifest and report (not the cache) as artifacts, the runs'
    MLflow runs nested under it (checked on the same server: starting one takes ~12 s)."""
    experiment = client.create_experiment("kd")
    child = client.create_run(experiment, run_name="r1").info.run_id
    (exp / "runs" / "r1").mkdir(parents=True)
    (exp / "runs" / "r1" / "tracking.json").write_text(json.dumps({"uri": uri, "run_id": child,
                                                                     "experiment_id": experiment}))
    (exp / "experiment.yaml").write_text("name: exp\nseeds: [0, 1]\nstudent_schedule: {epochs: 3}\n")
    (exp / "manifest.json").write_text("{}")
    (exp / "report" / "cache").mkdir(parents=True)
    (exp / "report" / "cache" / "big.npz").write_bytes(b"0" * 100)
    (exp / "report" / "results.md").write_text("| a |\n")
    (exp / "report" / "figures").mkdir()
    (exp / "report" / "figures" / "curve.png").write_bytes(b"png")
    parent = log_experiment(exp, uri, "exp")
    assert parent is not None
    run = client.get_run(parent)
    assert run.data.params["student_schedule.epochs"] == "3" and run.data.params["seeds"] == "[0, 1]"
    assert {a.path for a in client.list_artifacts(parent)} == {"manifest.json", "report"}
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/results.md", "report/figures"}
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert run.info.experiment_id == experiment and run.info.status == "FINISHED"
    assert log_experiment(exp, uri, "exp") == parent  # again: the same parent run


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
