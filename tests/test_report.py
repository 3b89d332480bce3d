"""The experiment report: pure functions against hand counts, and a real tiny experiment whose report is checked
against metrics recomputed here, independently, from the saved checkpoints."""

import csv
import json
import shutil
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from fixtures_data import make_fashion_mnist
from kdlab.config import TrainConfig, from_dict
from kdlab.models import create_model
from kdlab.report import (ReliabilityBins, build_report, expected_calibration_error, flops_per_image,
                          format_mean_std, paired_gain, reliability_bins)
from kdlab.report.efficiency import measure_efficiency
from kdlab.report.table import mean_std
from kdlab.runs.train import run

SEEDS = (0, 1)
PRECISION = "fp32"  # the independent check below computes in fp32, as the report does
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# -- pure functions ---------------------------------------------------------------------------------------------------
def _hand_probs():
    probs = torch.tensor([[0.9, 0.05, 0.05],  # conf 0.90, correct
                          [0.9, 0.05, 0.05],  # conf 0.90, wrong
                          [0.2, 0.7, 0.1],  # conf 0.70, correct
                          [0.45, 0.3, 0.25]])  # conf 0.45, wrong
    return probs, torch.tensor([0, 1, 1, 2])


def test_ece_golden_hand_made_case():
    probs, labels = _hand_probs()
    # 15 bins: {0.9, 0.9} share (13/15, 14/15]: 2/4·|0.5 − 0.9|; 0.7 alone: 1/4·|1 − 0.7|; 0.45 alone: 1/4·|0 − 0.45|
    expected = 100 * (0.5 * 0.4 + 0.25 * 0.3 + 0.25 * 0.45)
    assert expected_calibration_error(probs, labels) == pytest.approx(38.75)
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(expected)
    assert expected_calibration_error(probs.log(), labels, from_logits=True) == pytest.approx(38.75)
    # One bin: |mean accuracy − mean confidence| = |0.5 − 0.7375|
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(23.75)


def test_reliability_bins_edges_and_pooling():
    # Bins are (lo, hi]: a confidence of exactly 0.5 belongs to the first of two bins.
    bins = reliability_bins(torch.tensor([[0.5, 0.5], [0.8, 0.2]]), torch.tensor([0, 1]), bins=2)
    assert bins.count == [1, 1] and bins.correct == [1, 0]
    assert bins.accuracy() == [1.0, 0.0] and bins.mean_confidence() == pytest.approx([0.5, 0.8])
    probs, labels = _hand_probs()
    pooled = reliability_bins(probs[:2], labels[:2]) + reliability_bins(probs[2:], labels[2:])
    assert pooled == reliability_bins(probs, labels)
    assert ReliabilityBins.from_dict(pooled.to_dict()) == pooled
    assert ReliabilityBins.empty(15).ece() == 0.0


def test_paired_gain():
    mean, se, n = paired_gain({0: 1.0, 1: 3.0, 2: 5.0}, {0: 0.5, 1: 1.0, 3: 9.0})  # seeds 0 and 1 are paired
    assert n == 2 and mean == pytest.approx(1.25)
    assert se == pytest.approx(np.std([0.5, 2.0], ddof=1) / math.sqrt(2)) and se == pytest.approx(0.75)
    mean, se, n = paired_gain({0: 2.0}, {0: 1.5})  # one seed: no standard error (shown as "–"), not 0
    assert (mean, n) == (0.5, 1) and math.isnan(se)
    mean, se, n = paired_gain({0: 1.0}, {1: 1.0})
    assert n == 0 and math.isnan(mean) and math.isnan(se)


def test_mean_std_and_formatting():
    assert mean_std([1.0])[0] == 1.0 and math.isnan(mean_std([1.0])[1])  # one seed: no spread
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))  # sample std (ddof=1)
    assert format_mean_std(92.3141, 0.1234) == "92.31 ± 0.12"
    assert format_mean_std(2.30412, 0.00157, digits=3) == "2.304 ± 0.002"
    assert format_mean_std(None, None) == "–" and format_mean_std(float("nan"), 1.0) == "–"


def test_flops_per_image_matches_hand_count():
    assert flops_per_image(nn.Linear(10, 5), (10,)) == 2 * 10 * 5
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    # conv: 2 · (8 out channels · 8·8 positions) · (3 in channels · 3·3 kernel); linear: 2 · 512 · 4
    assert flops_per_image(conv, (3, 8, 8)) == 2 * 8 * 64 * 27 + 2 * 512 * 4
    assert conv.training  # the train/eval mode is restored


# -- a real tiny experiment -------------------------------------------------------------------------------------------
def _train(exp, data_root, model, name, seed, method="ce", teacher=None, epochs=3):
    cfg = from_dict(TrainConfig, {
        "model": model, "method": method, "teacher": teacher, "epochs": epochs, "seed": seed, "device": "cpu",
        "progress": False, "out_dir": str(exp / "runs"), "name": name,
        "dataset": {"root": str(data_root), "batch_size": 32}, "optim": {"lr": 0.05}, "precision": PRECISION})
    run(cfg)
    return {"key": name, "seed": seed, "run_dir": f"runs/{name}", "model": model, "method": method}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("report")
    data_root, exp = tmp / "fmnist", tmp / "exp"
    arrays = make_fashion_mnist(data_root, n_train=300, n_test=100)
    runs = []
    for seed in SEEDS:
        t = _train(exp, data_root, "cnn_small", f"teacher-s{seed}", seed, epochs=2)
        runs.append({**t, "role": "teacher", "teacher": None, "student": "cnn_small"})
        b = _train(exp, data_root, "cnn_tiny", f"baseline-s{seed}", seed)
        runs.append({**b, "role": "baseline", "teacher": None, "student": "cnn_tiny"})
        s = _train(exp, data_root, "cnn_tiny", f"kd-s{seed}", seed, "kd", str(exp / t["run_dir"] / "model.safetensors"))
        runs.append({**s, "role": "student", "teacher": "cnn_small", "student": "cnn_tiny"})
    (exp / "runs" / "kd-s2").mkdir()  # listed but unfinished: no result.json
    runs.append({"key": "kd-s2", "role": "student", "teacher": "cnn_small", "student": "cnn_tiny", "method": "kd",
                 "seed": 2, "run_dir": "runs/kd-s2", "model": "cnn_tiny"})
    manifest = {"name": "tiny-kd", "dataset": {"name": "fashion_mnist", "root": str(data_root), "batch_size": 32},
                "seeds": list(SEEDS), "runs": runs}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    logs: list[str] = []
    start = time.perf_counter()
    out = build_report(exp, device="cpu", log=logs.append)
    return {"exp": exp, "out": out, "logs": logs, "first_s": time.perf_counter() - start, "test": arrays["test"]}


def _results(experiment):
    return json.loads((experiment["out"] / "results.json").read_text())


def _row(results, role, method="ce"):
    return next(r for r in results["rows"] if r["role"] == role and r["method"] == method)


def test_report_files(experiment):
    out = experiment["out"]
    assert out == experiment["exp"] / "report"
    for name in ("results.csv", "results.json", "results.md", "index.html", "accuracy.png", "curves.png",
                 "reliability.png", "confusion_teacher_cnn_small.png", "confusion_baseline_cnn_tiny.png",
                 "confusion_kd_cnn_small_to_cnn_tiny.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html and "http" not in html  # self-contained: nothing fetched
    for src in [part.split('"')[0] for part in html.split('<img src="')[1:]]:
        assert (out / src).is_file(), src
    assert 'href="results.csv"' in html and 'href="results.json"' in html
    assert "tiny-kd" in html and "fashion_mnist" in html and "±" in html and "validation split" in html
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "Top-1 val-selected (%)" in md and "kd: cnn_small → cnn_tiny" in md


def test_table_shape_and_csv(experiment):
    results = _results(experiment)
    assert [(r["role"], r["method"], r["n_seeds"]) for r in results["rows"]] == [
        ("teacher", "ce", 2), ("baseline", "ce", 2), ("student", "kd", 2)]
    with open(experiment["out"] / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == results["columns"]
    for column in ("test_top1_last_mean", "test_top1_selected_std", "test_top5_last_mean", "test_nll_mean",
                   "test_ece_mean", "teacher_agreement_mean", "teacher_kl_mean", "gain_top1_last_mean",
                   "gain_top1_selected_se", "params", "flops_per_image", "checkpoint_mb", "latency_b1_ms",
                   "latency_b64_ms", "train_time_s", "n_seeds"):
        assert column in results["columns"], column
    for csv_row, json_row in zip(rows, results["rows"]):
        assert float(csv_row["test_top1_selected_mean"]) == pytest.approx(json_row["test_top1_selected_mean"])
    student = _row(results, "student", "kd")
    assert student["params"] == sum(p.numel() for p in create_model("cnn_tiny", num_classes=10, in_channels=1)
                                    .parameters())
    assert student["checkpoint_mb"] == pytest.approx((experiment["exp"] / "runs/kd-s0/model.safetensors")
                                                     .stat().st_size / 1e6)
    assert student["latency_b1_ms"] > 0 and student["flops_per_image"] > 0


def _model_logits(run_dir, filename, images):
    path = run_dir / filename
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["kdlab"])
    model = create_model(meta["model"], num_classes=10, in_channels=1)
    model.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        return model.eval()(images)


def _independent(experiment):
    """Per-run metrics recomputed here: plain torch on the IDX test images, the checkpoints loaded by hand."""
    images, labels = experiment["test"]
    x = (torch.from_numpy(images).float()[:, None] / 255.0 - FMNIST_MEAN) / FMNIST_STD
    y = torch.from_numpy(labels.astype(np.int64))
    out = {}
    for name in [f"{kind}-s{seed}" for kind in ("teacher", "baseline", "kd") for seed in SEEDS]:
        run_dir = experiment["exp"] / "runs" / name
        last = _model_logits(run_dir, "model.safetensors", x)
        has_best = (run_dir / "best.safetensors").is_file()
        sel = _model_logits(run_dir, "best.safetensors", x) if has_best else last
        out[name] = {"last": 100 * (last.argmax(1) == y).double().mean().item(),
                     "sel": 100 * (sel.argmax(1) == y).double().mean().item(),
                     "nll": F.cross_entropy(last, y).item(), "logits": last}
    for seed in SEEDS:
        s, t = out[f"kd-s{seed}"]["logits"], out[f"teacher-s{seed}"]["logits"]
        out[f"kd-s{seed}"]["agree"] = 100 * (s.argmax(1) == t.argmax(1)).double().mean().item()
        p_t = t.double().softmax(1)
        out[f"kd-s{seed}"]["kl"] = (p_t * (p_t.log() - s.double().log_softmax(1))).sum(1).mean().item()
    return out


def test_numbers_match_independent_computation(experiment):
    results, ind = _results(experiment), _independent(experiment)
    for role, method, prefix in (("teacher", "ce", "teacher"), ("baseline", "ce", "baseline"), ("student", "kd", "kd")):
        row = _row(results, role, method)
        for column, metric in (("test_top1_last", "last"), ("test_top1_selected", "sel"), ("test_nll", "nll")):
            values = [ind[f"{prefix}-s{seed}"][metric] for seed in SEEDS]
            assert row[f"{column}_mean"] == pytest.approx(np.mean(values), abs=1e-4), (role, column)
            assert row[f"{column}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4), (role, column)
    student = _row(results, "student", "kd")
    for column, metric in (("teacher_agreement", "agree"), ("teacher_kl", "kl")):
        values = [ind[f"kd-s{seed}"][metric] for seed in SEEDS]
        assert student[f"{column}_mean"] == pytest.approx(np.mean(values), abs=1e-4)
        assert student[f"{column}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    for column, metric in (("gain_top1_last", "last"), ("gain_top1_selected", "sel")):
        diffs = [ind[f"kd-s{seed}"][metric] - ind[f"baseline-s{seed}"][metric] for seed in SEEDS]
        assert student[f"{column}_mean"] == pytest.approx(np.mean(diffs), abs=1e-4)
        assert student[f"{column}_se"] == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(len(diffs)), abs=1e-4)
    assert student["gain_n_seeds"] == 2
    assert _row(results, "baseline")["gain_top1_last_mean"] is None
    assert _row(results, "baseline")["teacher_agreement_mean"] is None


def test_ece_matches_independent_binning(experiment):
    results, ind = _results(experiment), _independent(experiment)
    images, labels = experiment["test"]
    eces = []
    for seed in SEEDS:
        probs = ind[f"kd-s{seed}"]["logits"].double().softmax(1).numpy()
        conf, correct = probs.max(1), probs.argmax(1) == labels
        ece = 0.0
        for b in range(15):  # (b/15, (b+1)/15]
            inside = (conf > b / 15) & (conf <= (b + 1) / 15)
            if inside.any():
                ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
        eces.append(100 * ece)
    assert _row(results, "student", "kd")["test_ece_mean"] == pytest.approx(np.mean(eces), abs=1e-4)


def test_unfinished_run_is_skipped_and_noted(experiment):
    results = _results(experiment)
    assert [s["key"] for s in results["skipped"]] == ["kd-s2"]
    assert "result.json" in results["skipped"][0]["reason"]
    assert all(r["seed"] != 2 for r in results["runs"])
    assert "kd-s2" in (experiment["out"] / "index.html").read_text(encoding="utf-8")
    assert "kd-s2" in (experiment["out"] / "results.md").read_text(encoding="utf-8")


def test_second_report_reuses_the_cache(experiment):
    runs = experiment["exp"] / "runs"
    cache_files = sorted(runs.glob("*/eval_cache.json")) + sorted(runs.glob("*/test_logits.safetensors"))
    assert len(cache_files) == 12
    before = {p: p.stat().st_mtime_ns for p in cache_files}
    first = _results(experiment)
    logs: list[str] = []
    start = time.perf_counter()
    build_report(experiment["exp"], log=logs.append)
    elapsed = time.perf_counter() - start
    assert {p: p.stat().st_mtime_ns for p in cache_files} == before  # nothing re-evaluated or re-measured
    assert not [m for m in logs if m.startswith(("evaluating", "measuring"))]
    assert any(m.startswith("evaluating") for m in experiment["logs"])
    assert _results(experiment)["rows"] == first["rows"]
    assert elapsed < 60


def test_cache_is_invalidated_by_a_new_checkpoint(experiment, tmp_path):
    import shutil

    exp = tmp_path / "copy"
    shutil.copytree(experiment["exp"], exp)  # copy2 keeps sizes and mtimes: the copied caches stay valid
    target = exp / "runs" / "baseline-s1" / "model.safetensors"
    target.write_bytes(target.read_bytes())  # same weights, new mtime: the cache must not be trusted
    (exp / "runs" / "kd-s1" / "best.safetensors").unlink()  # as after training with an empty validation split
    logs: list[str] = []
    build_report(exp, log=logs.append)
    assert sorted(m for m in logs if m.startswith("evaluating")) == [
        "evaluating baseline-s1 (baseline-s1) on the test split", "evaluating kd-s1 (kd-s1) on the test split"]
    copied, original = _results({"out": exp / "report"}), _results(experiment)
    assert _row(copied, "baseline")["test_top1_last_mean"] == pytest.approx(_row(original, "baseline")[
        "test_top1_last_mean"])
    kd1 = next(r for r in copied["runs"] if r["key"] == "kd-s1")
    assert kd1["selected_from"] == "model.safetensors" and kd1["test_top1_selected"] == kd1["test_top1_last"]
    assert any("kd-s1" in note and "best.safetensors" in note for note in copied["notes"])
    # The copy's students were distilled from the original's teachers: matched by run directory name.
    assert kd1["teacher_run"] == "teacher-s1"
    assert _row(copied, "student", "kd")["teacher_agreement_mean"] == pytest.approx(
        _row(original, "student", "kd")["teacher_agreement_mean"])


def test_measure_efficiency_keys():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    values = measure_efficiency(model, (1, 4, 4), Path(__file__))
    assert values["params"] == 16 * 3 + 3 and values["flops_per_image"] == 2 * 16 * 3
    assert values["checkpoint_mb"] == pytest.approx(Path(__file__).stat().st_size / 1e6)
    assert values["latency_b1_ms"] > 0 and values["latency_b64_ms"] > 0


def test_latencies_of_several_models_are_taken_in_the_same_rounds():
    from kdlab.report.efficiency import latency_table

    small, big = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), nn.Sequential(nn.Flatten(), nn.Linear(16, 4096))
    table = latency_table([(small, (1, 4, 4)), (big, (1, 4, 4))], batches=(1, 64), rounds=2)
    assert [sorted(t) for t in table] == [[1, 64], [1, 64]]
    assert all(ms > 0 for t in table for ms in t.values()) and table[1][64] > table[0][64]


def test_teacher_given_as_a_checkpoint(experiment, tmp_path):
    """The experiment runner lists a supplied teacher with ``run_dir: null`` and its ``checkpoint``."""
    manifest = json.loads((experiment["exp"] / "manifest.json").read_text())
    given = str(experiment["exp"] / "runs" / "teacher-s0" / "model.safetensors")  # what kd-s0's config names
    teacher = {"key": "given-teacher", "role": "teacher", "teacher": None, "student": "cnn_small", "method": "ce",
               "seed": 0, "model": "cnn_small", "run_dir": None, "checkpoint": given}
    runs = [teacher] + [r for r in manifest["runs"] if r["key"] in ("baseline-s0", "kd-s0")]
    exp = tmp_path / "given"
    for row in runs:  # a manifest's runs are inside its experiment (an absolute or escaping run_dir is refused)
        if row["run_dir"]:
            shutil.copytree(experiment["exp"] / row["run_dir"], exp / row["run_dir"])
    exp.mkdir(exist_ok=True)
    (exp / "manifest.json").write_text(json.dumps({**manifest, "runs": runs}))
    results = _results({"out": build_report(exp)})
    ind = _independent(experiment)
    row = _row(results, "teacher")
    assert row["n_seeds"] == 1 and row["test_top1_last_mean"] == pytest.approx(ind["teacher-s0"]["last"], abs=1e-4)
    assert row["test_top1_selected_mean"] == row["test_top1_last_mean"] and row["train_time_s"] is None
    kd0 = next(r for r in results["runs"] if r["key"] == "kd-s0")
    assert kd0["teacher_run"] == "given-teacher"
    assert kd0["teacher_agreement"] == pytest.approx(ind["kd-s0"]["agree"], abs=1e-4)
    assert any("given-teacher" in note and "checkpoint" in note for note in results["notes"])
    assert (exp / "report" / "cache" / "given-given-teacher" / "eval_cache.json").is_file()


def test_the_answer_comes_first(experiment):
    """A short table of paired gains with their significance before the wide table, and a gain figure."""
    from kdlab.report.stats import t_two_sided_p
    from kdlab.report.summary import summary_rows

    results = _results(experiment)
    summary = results["summary"]
    students = [r for r in results["rows"] if r["role"] == "student"]
    by_gain = sorted(students, key=lambda r: -r["gain_top1_last_mean"])
    assert [s["label"] for s in summary] == [r["label"] for r in by_gain]
    for entry in summary:
        if not entry["gain_top1_last_se"]:  # identical per-seed differences: no spread, no test
            assert entry["gain_t"] is None and entry["significant"] is None and entry["verdict"].startswith("no test")
            continue
        t = entry["gain_top1_last_mean"] / entry["gain_top1_last_se"]
        assert entry["gain_t"] == pytest.approx(t)
        assert entry["gain_top1_last_p"] == pytest.approx(t_two_sided_p(t, entry["gain_n_seeds"] - 1))
        assert entry["significant"] is (abs(t) > 12.7062)  # 2 seeds: 1 degree of freedom
        assert entry["verdict"].endswith("2 seeds: weak evidence")
    md = (experiment["out"] / "results.md").read_text()
    assert md.index("## Gains over the baseline") < md.index("## All rows")
    html = (experiment["out"] / "index.html").read_text()
    assert html.index("Gains over the baseline") < html.index("All rows") and "gains.png" in html
    assert (experiment["out"] / "gains.png").stat().st_size > 1000
    one_seed = summary_rows([{**students[0], "gain_n_seeds": 1, "gain_top1_last_se": 0.0}])
    assert one_seed[0]["gain_t"] is None and one_seed[0]["significant"] is None
    assert one_seed[0]["verdict"].startswith("no test (1 seed)")
