"""The results table: one row per teacher, per baseline and per (teacher, student, method), aggregated over seeds.

Spread is the sample standard deviation over seeds (ddof=1; undefined with one seed: null, shown as "–"). A method's
gain over the baseline of the same student is paired by seed: the mean of per-seed differences, with its standard error
and the two-sided p-value of a paired t-test with n − 1 degrees of freedom (:mod:`kdlab.report.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from kdlab.expdir import ROLES, PlannedRun, file_safe
from kdlab.report.collect import RunEval
from kdlab.report.stats import format_p, paired_t_p

RowKey = tuple[str, str | None, str, str]  # (role, teacher, student, method)


# -- statistics -------------------------------------------------------------------------------------------------------
def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for one value, which has no spread to show; nan, nan for
    none)."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def paired_gain(a_by_seed: dict[int, float], b_by_seed: dict[int, float]) -> tuple[float, float, int]:
    """Mean of ``a[s] - b[s]`` over the seeds present in both, its standard error std(ddof=1)/sqrt(n), and n.

    With one common seed the standard error is undefined (nan, as the std is); with none, (nan, nan, 0).
    """
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    diffs = np.asarray([a_by_seed[s] - b_by_seed[s] for s in seeds], dtype=np.float64)
    if diffs.size == 0:
        return math.nan, math.nan, 0
    se = float(diffs.std(ddof=1) / math.sqrt(diffs.size)) if diffs.size > 1 else math.nan
    return float(diffs.mean()), se, int(diffs.size)


def format_mean_std(mean: float | None, std: float | None, digits: int = 2, sep: str = " ± ") -> str:
    """``"92.31 ± 0.12"``; a missing mean gives "–", a missing spread just the mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{sep}{std:.{digits}f}"


def format_count(value: float | None) -> str:
    """1234567 -> "1.23M" (parameters, FLOPs)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _clean(value: Any) -> Any:
    """nan -> None, so JSON and CSV show a missing value rather than NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value


# -- rows -------------------------------------------------------------------------------------------------------------
def row_key(run: RunEval | PlannedRun) -> RowKey:
    spec = run.spec if isinstance(run, RunEval) else run
    return spec.role, spec.teacher if spec.role in ("student", "assistant") else None, spec.student, spec.method


def row_label(key: RowKey) -> str:
    role, teacher, student, method = key
    if role == "teacher":
        return f"{student} (teacher)"
    if role == "baseline":
        return f"{student} (baseline)"
    if role == "assistant":
        return f"{student} (assistant, {method} ← {teacher})"
    if teacher is None:  # a method without a teacher (dml, byot)
        return f"{method}: {student}"
    return f"{method}: {teacher} → {student}"


def row_slug(key: RowKey) -> str:
    """A file-name-safe name of a row: ``teacher_resnet56``, ``baseline_resnet20``, ``kd_resnet56_to_resnet20``."""
    role, teacher, student, method = key
    text = f"{role}_{student}" if role != "student" else f"{method}_{teacher}_to_{student}"
    return file_safe(text)


def group_runs(runs: Sequence[RunEval]) -> dict[RowKey, list[RunEval]]:
    """Runs per row, rows in role order (teachers, baselines, students) then first appearance; seeds sorted."""
    groups: dict[RowKey, list[RunEval]] = {}
    for run in runs:
        groups.setdefault(row_key(run), []).append(run)
    ordered = sorted(groups, key=lambda k: ROLES.index(k[0]))  # stable: keeps first appearance within a role
    return {k: sorted(groups[k], key=lambda r: r.spec.seed) for k in ordered}


def _by_seed(runs: Sequence[RunEval], part: str, metric: str) -> dict[int, float]:
    return {r.spec.seed: getattr(r, part)[metric] for r in runs if getattr(r, part).get(metric) is not None}


def _stat(row: dict, name: str, values: Iterable[float | None]) -> None:
    row[f"{name}_mean"], row[f"{name}_std"] = (_clean(v) for v in mean_std(values))


def build_row(key: RowKey, runs: list[RunEval], baseline: list[RunEval] | None, efficiency: dict | None,
              top5: bool) -> dict:
    """One table row (snake_case keys, full precision, None where a value does not apply)."""
    role, teacher, student, method = key
    row: dict = {"role": role, "label": row_label(key), "teacher": teacher, "student": student, "method": method,
                 "model": runs[0].spec.model, "n_seeds": len(runs), "seeds": [r.spec.seed for r in runs]}
    metrics = ("top1", "top5") if top5 else ("top1",)
    for metric in metrics:
        for part in ("last", "selected"):
            _stat(row, f"test_{metric}_{part}", _by_seed(runs, part, metric).values())
    _stat(row, "test_nll", (r.last["nll"] for r in runs))
    _stat(row, "test_ece", (r.last["ece"] for r in runs))
    _stat(row, "teacher_agreement", (r.agreement for r in runs))
    _stat(row, "teacher_kl", (r.kl for r in runs))
    n = None
    for part in ("last", "selected"):
        mean, se, n = paired_gain(_by_seed(runs, part, "top1"), _by_seed(baseline, part, "top1")) if baseline \
            else (math.nan, math.nan, None)
        row[f"gain_top1_{part}_mean"], row[f"gain_top1_{part}_se"] = _clean(mean), _clean(se)
        row[f"gain_top1_{part}_p"] = paired_t_p(_clean(mean), _clean(se), n)[1]  # paired t-test, n - 1 df
    row["gain_n_seeds"] = n  # None: no baseline row to compare with
    eff = efficiency or {}
    for name in ("params", "flops_per_image", "checkpoint_mb", "latency_b1_ms", "latency_b64_ms"):
        row[name] = eff.get(name)
    row["train_time_s"] = _clean(mean_std(r.result.get("train_time_s") for r in runs)[0])
    row["selected_epoch_mean"] = _clean(mean_std(r.selected.get("epoch") for r in runs)[0])
    for name in sorted({k for r in runs for k in r.deploy}):  # from the runs' exports ("deployable accuracy")
        if name.endswith("top1"):
            _stat(row, name, (r.deploy.get(name) for r in runs))
        else:
            row[name] = _clean(mean_std(r.deploy.get(name) for r in runs)[0])
    return row


def build_rows(runs: Sequence[RunEval], efficiency: dict[tuple[str, str], dict], top5: bool,
               diverged: Sequence[PlannedRun] = ()) -> list[dict]:
    """The table's rows; each says in ``flags`` how many of its seeds collapsed to chance or diverged (NaN/inf)."""
    groups = group_runs(runs)
    baselines = {k[2]: v for k, v in groups.items() if k[0] == "baseline"}
    failed: dict[RowKey, list[PlannedRun]] = {}
    for spec in diverged:
        failed.setdefault(row_key(spec), []).append(spec)
    rows = []
    for key, group in groups.items():
        row = build_row(key, group, baselines.get(key[2]) if key[0] == "student" else None,
                        efficiency.get((key[2], group[0].spec.model)), top5)
        rows.append(_flag(row, group, failed.pop(key, [])))
    for key, specs in failed.items():  # every seed of the row diverged: a row that says so
        rows.append(_flag({"role": key[0], "label": row_label(key), "teacher": key[1], "student": key[2],
                           "method": key[3], "model": specs[0].model, "n_seeds": 0, "seeds": []}, [], specs))
    return rows


def _flag(row: dict, runs: Sequence[RunEval], diverged: Sequence[PlannedRun]) -> dict:
    total = len(runs) + len(diverged)
    collapsed = sum(1 for r in runs if r.result.get("collapsed"))
    flags = []
    if collapsed:
        flags.append(f"collapsed to chance in {collapsed}/{total} seed(s)")
    if diverged:
        flags.append(f"diverged (NaN/inf loss) in {len(diverged)}/{total} seed(s)")
    row.update(n_collapsed=collapsed, n_diverged=len(diverged), flags="; ".join(flags) or None)
    return row


def run_record(run: RunEval) -> dict:
    """One finished run's own numbers (results.json "runs")."""
    spec = run.spec
    return {"key": spec.key, "role": spec.role, "teacher": spec.teacher, "student": spec.student,
            "method": spec.method, "seed": spec.seed, "model": spec.model, "run_dir": spec.shown_path,
            "teacher_run": run.teacher_key,
            "test_top1_last": run.last["top1"], "test_top1_selected": run.selected["top1"],
            "test_top5_last": run.last.get("top5"), "test_top5_selected": run.selected.get("top5"),
            "test_nll": run.last["nll"], "test_ece": run.last["ece"], "teacher_agreement": run.agreement,
            "teacher_kl": run.kl, "selected_epoch": run.selected.get("epoch"),
            "selected_from": run.selected.get("source"), "train_time_s": run.result.get("train_time_s")}


# -- display columns (Markdown and HTML) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Display:
    header: str
    key: str  # a plain column, or the stem of <key>_mean / <key>_std (or _se for gains)
    kind: str = "mean_std"  # mean_std | gain | count | number | text | p
    digits: int = 2
    tip: str = ""  # the precise meaning, shown as the header's tooltip in HTML


GAIN_TIP = ("Test top-1 of the method minus that of the baseline of the same student, seed by seed, in percentage "
            "points: the mean over seeds ± its standard error (the spread of the per-seed differences / √n).")
P_TIP = ("Two-sided p-value of a paired t-test over seeds (n − 1 degrees of freedom): how often a difference at "
         "least this large would appear by chance if the method changed nothing. Below 0.05: a clear difference.")
SELECTED_TIP = "Test top-1 of the epoch with the best validation top-1 (the test split never selects anything)."


DEPLOY_COLUMNS = [Display("ONNX top-1 (%)", "onnx_test_top1"), Display("int8 top-1 (%)", "int8_test_top1"),
                  Display("ORT latency b1 (ms)", "onnx_latency_b1_ms", "number", 3),
                  Display("int8 ORT latency b1 (ms)", "int8_latency_b1_ms", "number", 3),
                  Display("ORT latency b64 (ms)", "onnx_latency_b64_ms", "number", 1),
                  Display("int8 ORT latency b64 (ms)", "int8_latency_b64_ms", "number", 1),
                  Display("int8 size (MB)", "int8_size_mb", "number", 3)]


def deploy_columns(rows: list[dict]) -> list[Display]:
    """The export columns some row has values for (an experiment with ``export: [onnx]``)."""
    return [c for c in DEPLOY_COLUMNS
            if any(r.get(c.key) is not None or r.get(f"{c.key}_mean") is not None for r in rows)]


def display_columns(top5: bool, flags: bool = False) -> list[Display]:
    cols = [Display("Model", "label", "text"), *([Display("Flags", "flags", "text")] if flags else []),
            Display("Top-1 last (%)", "test_top1_last", tip="Test top-1 accuracy of the last epoch, mean ± std over "
                    "seeds."),
            Display("Top-1 val-selected (%)", "test_top1_selected", tip=SELECTED_TIP)]
    if top5:
        cols += [Display("Top-5 last (%)", "test_top5_last"),
                 Display("Top-5 val-selected (%)", "test_top5_selected", tip=SELECTED_TIP)]
    cols += [Display("NLL", "test_nll", digits=3, tip="Negative log-likelihood on the test split (nats, lower is "
                     "better)."),
             Display("ECE (%)", "test_ece", tip="Expected calibration error, 15 confidence bins (lower is better)."),
             Display("Agreement with teacher (%)", "teacher_agreement",
                     tip="Share of test images where the student's top-1 class is the teacher's."),
             Display("KL(teacher‖student)", "teacher_kl", digits=3,
                     tip="Mean KL divergence from the teacher's to the student's test predictions (nats)."),
             Display("Gain, last epoch (points)", "gain_top1_last", "gain", tip=GAIN_TIP),
             Display("p-value", "gain_top1_last_p", "p", tip=P_TIP),
             Display("Gain, val-selected (points)", "gain_top1_selected", "gain", tip=GAIN_TIP),
             Display("Params", "params", "count"), Display("FLOPs / image", "flops_per_image", "count"),
             Display("Checkpoint (MB)", "checkpoint_mb", "number", 2),
             Display("CPU latency b1 (ms)", "latency_b1_ms", "number", 2, tip="One image per forward pass."),
             Display("CPU latency b64 (ms)", "latency_b64_ms", "number", 1, tip="64 images per forward pass."),
             Display("Train time (s)", "train_time_s", "number", 1), Display("Seeds", "n_seeds", "text")]
    return cols


def display_value(row: dict, col: Display) -> str:
    if col.kind == "text":
        value = row.get(col.key)
        return "–" if value is None else str(value)
    if col.kind == "count":
        return format_count(row.get(col.key))
    if col.kind == "p":
        value = row.get(col.key)
        return "–" if value is None else format_p(value).removeprefix("p = ")
    if col.kind == "number":
        value = row.get(col.key)
        return "–" if value is None else f"{value:.{col.digits}f}"
    if col.kind == "gain":
        mean, se = row.get(f"{col.key}_mean"), row.get(f"{col.key}_se")
        spread = "–" if se is None else f"{se:.{col.digits}f}"
        return "–" if mean is None else f"{mean:+.{col.digits}f} ± {spread}"
    mean, std = row.get(f"{col.key}_mean"), row.get(f"{col.key}_std")
    if mean is not None and std is None:  # one seed: no spread, and not a spread of 0
        return format_mean_std(mean, None, col.digits) + " ± –"
    return format_mean_std(mean, std, col.digits)
