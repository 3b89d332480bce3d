"""SIGKILL a tiny experiment at 10 seeded random points, each followed by the same command again: the final report's
rows equal an uninterrupted run's, and no finished run is ever lost or changed on the way.

Seven points kill inside a file write (the N-th ``kdlab.files.atomic_write`` of the invocation, or of its report):
with the temporary file torn in half, complete but not yet renamed, or just after the rename. The hook is this test's
own wrapper around ``kdlab.cli.main`` (it replaces ``atomic_write`` in the child process); kdlab has no test-only code
path. Three points kill at a random time. Points scale with an uninterrupted invocation (run first): its writes and
its seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixtures_data import make_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = """
name: {name}
out_dir: {out}
dataset: {{name: fashion_mnist, root: {data}, batch_size: 32, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_tiny, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd, dkd]
teacher_schedule: {{epochs: 2}}
student_schedule: {{epochs: 2}}
device: cpu
progress: false
"""
# Runs kdlab with the N-th atomic write killed (KILL_AT_WRITE=N, KILL_PHASE=torn|before_rename|after_rename).
WRAPPER = """
import os, signal, sys
import kdlab.files as files
original, calls = files.atomic_write, [0]
target, phase = int(os.environ["KILL_AT_WRITE"]), os.environ["KILL_PHASE"]
report_only = os.environ.get("KILL_SCOPE") == "report"  # count the report's writes only (its files, its run caches)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write(path, write):
    counted = not report_only or any(part in str(path) for part in ("/report/", "eval_cache", "test_logits"))
    calls[0] += counted
    if not counted or calls[0] != target:  # (target 0: kill nothing, say how many writes there were)
        return original(path, write)
    if phase == "after_rename":
        original(path, write)
        die()

    def interrupted(tmp):
        write(tmp)
        if phase == "torn":
            os.truncate(tmp, os.path.getsize(tmp) // 2)
        die()

    original(path, interrupted)

files.atomic_write = atomic_write
from kdlab.cli import main
code = main(sys.argv[1:])
print(f"atomic writes: {calls[0]}", file=sys.stderr)
sys.exit(code)
"""
VOLATILE = ("train_time_s", "latency_b1_ms", "latency_b64_ms")
PHASES = ("torn", "before_rename", "after_rename")


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KDLAB_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", **extra}


def _rows(exp_dir: Path) -> list[dict]:
    rows = json.loads((exp_dir / "report" / "results.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def _finished(exp_dir: Path) -> dict[str, str]:
    """Finished runs -> sha256 of their result.json and model.safetensors."""
    out = {}
    for result in (exp_dir / "runs").glob("*/result.json"):
        model = result.parent / "model.safetensors"
        out[result.parent.name] = hashlib.sha256(result.read_bytes() + model.read_bytes()).hexdigest()
    return out


def _points(rng: random.Random, writes: int, seconds: float) -> list[tuple]:
    """Six kills inside the N-th write of an invocation and three after a random time, early ones, scaled to the
    uninterrupted invocation (its ``writes`` and ``seconds``) so that they interrupt on a fast machine as on a slow
    one; and, before the last, one inside a write of the report (reached once the runs are done, so always)."""
    kinds = ["write", "time", "write", "write", "time", "write", "write", "time", "report", "write"]
    return [("write", rng.randint(3, max(4, writes // 6)), rng.choice(PHASES)) if kind == "write"
            else ("report", rng.randint(1, 12), rng.choice(PHASES)) if kind == "report"
            else ("time", round(rng.uniform(0.18, 0.3) * seconds, 2), None) for kind in kinds]


def _kill(command_args: list[str], point: tuple) -> int:
    kind, value, phase = point
    if kind in ("write", "report"):
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *command_args], capture_output=True,
                              env=_env(KILL_AT_WRITE=str(value), KILL_PHASE=phase, KILL_SCOPE=kind), timeout=300)
        return proc.returncode
    proc = subprocess.Popen([sys.executable, "-m", "kdlab", *command_args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    try:
        proc.wait(timeout=value)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait()


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_report(tmp_path):
    make_fashion_mnist(tmp_path / "data", n_train=200, n_test=60)
    paths = {}
    for name in ("whole", "cut"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(EXPERIMENT.format(name=name, out=tmp_path / "out", data=tmp_path / "data"))
    start = time.perf_counter()
    reference = subprocess.run([sys.executable, "-c", WRAPPER, "run", str(paths["whole"])], capture_output=True,
                               text=True, env=_env(KILL_AT_WRITE="0", KILL_PHASE="torn"), timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    writes = int(reference.stderr.strip().splitlines()[-1].split("atomic writes: ")[1])
    seconds = time.perf_counter() - start

    exp_dir = tmp_path / "out" / "cut"
    seen: dict[str, str] = {}
    killed = 0
    for point in _points(random.Random(20240612), writes, seconds):
        code = _kill(["run", str(paths["cut"])], point)
        killed += code == -signal.SIGKILL
        print(point, code, len(_finished(exp_dir)) if (exp_dir / "runs").is_dir() else 0, flush=True)
        assert code in (0, -signal.SIGKILL), f"{point}: exit {code}"
        now = _finished(exp_dir) if (exp_dir / "runs").is_dir() else {}
        assert {k: now.get(k) for k in seen} == seen, f"{point}: a finished run was lost or changed"
        seen = now
    assert killed >= 8, "most points must interrupt the experiment"

    final = subprocess.run([sys.executable, "-m", "kdlab", "run", str(paths["cut"])], capture_output=True, text=True,
                           env=_env(), timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert json.loads(final.stdout.strip().splitlines()[-1])["runs"] == 7
    assert _rows(exp_dir) == _rows(tmp_path / "out" / "whole")
    leftovers = [p for p in (exp_dir / "runs").rglob(".*.tmp")
                 if not p.name.startswith((".eval_cache", ".test_logits"))]
    assert not leftovers, "a resumed run clears its killed writes' leftovers (the report's caches are not the run's)"
    print(f"10 kill points, {killed} interrupted, {time.perf_counter() - start:.0f} s")
