"""Smoke test of benchmarks/kd_throughput.py: tiny models, a few batches, the JSON contract of its last line."""

import importlib.util
import json
import math
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("kd_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kd_throughput_smoke(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:  # one thread: a 2-thread run slows down many times over when other processes share the CPU
        result = bench.main(["--teacher", "cnn_small", "--student", "cnn_tiny", "--batch-size", "8", "--steps", "2",
                             "--warmup", "1", "--windows", "2", "--device", "cpu", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 1  # a table before the JSON
    printed = json.loads(lines[-1])
    assert printed == json.loads(json.dumps(result))
    for key in ("student_img_s", "teacher_img_s", "online_kd_img_s", "shared_kd_img_s", "online_fraction_of_limit",
                "shared_fraction_of_student"):
        assert math.isfinite(printed[key]) and printed[key] > 0, key
    expected = {"device": "cpu", "batch_size": 8, "teacher": "cnn_small", "student": "cnn_tiny", "shape": [1, 32, 32],
                "channels_last": True, "threads": 1}
    assert {k: printed[k] for k in expected} == expected
    assert printed["precision"] in ("bf16", "fp32")
    assert printed["torch"]
    assert all(len(rates) == 2 for rates in printed["windows"].values())
    assert all(math.isfinite(v) for v in printed["final_losses"].values())


def test_kd_throughput_contended_smoke(capsys):
    bench = _load()
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--teacher", "cnn_tiny", "--student", "cnn_tiny", "--batch-size", "8", "--steps", "2",
                             "--warmup", "1", "--windows", "1", "--device", "cpu", "--threads", "1", "--contend"])
    finally:
        torch.set_num_threads(threads)
    assert set(result["contended_fraction_of_idle"]) == set(result["windows"])
    assert all(v > 0 for v in result["contended_img_s"].values()) and result["contended_threads_rounds"] == [1]
    assert "of idle" in capsys.readouterr().out
