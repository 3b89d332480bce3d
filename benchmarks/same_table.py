"""Same command, same table: one small experiment on an idle machine and again beside a busy process.

    python benchmarks/same_table.py                      # configs/quick.yaml, default threads (pinned)
    python benchmarks/same_table.py --threads auto       # the load-adaptive mode, for contrast

Runs ``kdlab run configs/quick.yaml`` twice into two experiment directories: first alone, then while one other
CPU-bound process (a Python busy loop) runs. With the default thread setting (one count fixed from the machine, never
from the load) the two ``results.json`` rows must be equal number for number; the script prints both tables' test
top-1 per row and exits 1 when any number differs. Times (training and latency) are left out of the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("test_top1_last_mean", "test_top1_selected_mean", "test_nll_mean", "teacher_agreement_mean",
            "gain_top1_last_mean", "gain_top1_selected_mean")


def run(out: Path, threads: str | None) -> tuple[list[dict], float]:
    cmd = [sys.executable, "-m", "kdlab", "run", str(ROOT / "configs" / "quick.yaml"), f"out_dir={out}",
           "device=cpu"] + ([f"threads={threads}"] if threads else [])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "KDLAB_NO_PROGRESS": "1"})
    rows = json.loads((out / "fmnist-quick" / "report" / "results.json").read_text())["rows"]
    return rows, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/kdlab-same-table")
    parser.add_argument("--threads", default=None, help="threads=... for both runs (default: kdlab's default)")
    args = parser.parse_args()
    out = Path(args.out)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    idle, idle_s = run(out / "idle", args.threads)
    busy_loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy, busy_s = run(out / "busy", args.threads)
    finally:
        busy_loop.kill()
    differ = 0
    print(f"{'row':<40} {'idle':>10} {'busy':>10}")
    for a, b in zip(idle, busy):
        print(f"{a['label'][:40]:<40} {a['test_top1_selected_mean']:>10.4f} {b['test_top1_selected_mean']:>10.4f}")
        differ += sum(a.get(k) != b.get(k) for k in COMPARED)
    differ += abs(len(idle) - len(busy))
    print(json.dumps({"threads": args.threads or "default", "rows": len(idle), "numbers_differing": differ,
                      "idle_s": round(idle_s, 1), "busy_s": round(busy_s, 1)}))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
