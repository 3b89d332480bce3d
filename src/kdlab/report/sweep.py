"""The report of a hyperparameter sweep: test top-1 (val-selected) against each swept hyperparameter.

Sweep points are the runs whose manifest row carries ``labels`` (``{"kd.T": 2, "kd.alpha": 0.9}``, written by
``kdlab.experiments.sweep``). A *family* is one (teacher, student, swept method entry); a *point* one setting of its
hyperparameters. ``sweep.csv`` / ``sweep.md`` hold one row per point (mean ± sample std over seeds of the
val-selected and the last-epoch test top-1), and ``sweep.png`` one panel per hyperparameter: the metric against
its value, one line per family and setting of the other hyperparameters, the student's baseline dashed.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdlab.report.collect import RunEval
from kdlab.report.table import format_mean_std, mean_std

METRIC = "test top-1 (%), val-selected epoch"


def family(run: RunEval) -> tuple[str | None, str, str]:
    """(teacher, student, swept entry): the entry is the method label without its ``[point]``."""
    return run.spec.teacher, run.spec.student, run.spec.method.split("[", 1)[0]


def _value_key(value: Any) -> tuple:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), "") if numeric else (1, 0.0, str(value))


def sweep_rows(runs: Sequence[RunEval]) -> list[dict]:
    """One row per (family, point), sorted by family then by the hyperparameters' values."""
    points: dict[tuple, list[RunEval]] = {}
    for run in runs:
        if run.spec.labels and run.spec.role == "student":
            key = (family(run), tuple(sorted(run.spec.labels.items())))
            points.setdefault(key, []).append(run)
    rows = []
    for ((teacher, student, entry), params), group in points.items():
        row: dict = {"teacher": teacher, "student": student, "method": entry, **dict(params),
                     "n_seeds": len(group), "seeds": sorted(r.spec.seed for r in group)}
        for part in ("selected", "last"):
            mean, std = mean_std(getattr(r, part)["top1"] for r in group)
            row[f"test_top1_{part}_mean"], row[f"test_top1_{part}_std"] = _clean(mean), _clean(std)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["teacher"]), r["student"], r["method"],
                             [_value_key(r[k]) for k in sorted(_params(r))]))
    return rows


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else value


def _params(row: dict) -> list[str]:
    fixed = {"teacher", "student", "method", "n_seeds", "seeds"}
    return [k for k in row if k not in fixed and not k.startswith("test_top1_")]


def baselines(runs: Sequence[RunEval]) -> dict[str, float]:
    """Mean val-selected test top-1 of each student's baseline."""
    by_student: dict[str, list[float]] = {}
    for run in runs:
        if run.spec.role == "baseline":
            by_student.setdefault(run.spec.student, []).append(run.selected["top1"])
    return {s: float(np.mean(v)) for s, v in by_student.items()}


def write_sweep(runs: Sequence[RunEval], out: Path) -> dict[str, list[tuple[str, str]]]:
    """Write sweep.csv, sweep.md and sweep.png when the experiment swept something; the figure for the HTML."""
    rows = sweep_rows(runs)
    for name in ("sweep.csv", "sweep.md", "sweep.png"):
        (out / name).unlink(missing_ok=True)
    if not rows:
        return {}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
    (out / "sweep.csv").write_text(buf.getvalue(), encoding="utf-8")
    (out / "sweep.md").write_text(sweep_markdown(rows), encoding="utf-8")
    sweep_figure(rows, baselines(runs), out / "sweep.png")
    names = ", ".join(sorted({p for r in rows for p in _params(r)}))
    return {"Sweep": [("sweep.png", f"Sweep of {names}: {METRIC}, mean ± std over seeds (table: sweep.md, "
                                    "sweep.csv); dashed: the student's baseline")]}


def sweep_markdown(rows: list[dict]) -> str:
    params = list(dict.fromkeys(p for r in rows for p in _params(r)))
    head = ["Teacher → student", "Method", *params, "Seeds", "Top-1 val-selected (%)", "Top-1 last (%)"]
    lines = ["# Sweep", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [f"{r['teacher']} → {r['student']}" if r["teacher"] else r["student"], r["method"],
                 *[str(r.get(p, "–")) for p in params], str(r["n_seeds"]),
                 format_mean_std(r["test_top1_selected_mean"], r["test_top1_selected_std"]),
                 format_mean_std(r["test_top1_last_mean"], r["test_top1_last_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"Mean ± sample std over seeds of the {METRIC} and of the last epoch."]) + "\n"


def sweep_figure(rows: list[dict], baseline: dict[str, float], path: Path) -> Path:
    """One panel per hyperparameter: the metric against its value, a line per family and other settings."""
    params = list(dict.fromkeys(p for r in rows for p in _params(r)))
    from matplotlib.figure import Figure  # (here: a worker process imports this package, and plots nothing)

    fig = Figure(figsize=(5.2 * len(params), 4.0))
    for i, param in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        lines: dict[tuple, list[dict]] = {}
        for r in rows:
            if param in r:
                others = tuple((p, r[p]) for p in _params(r) if p != param)
                lines.setdefault((r["teacher"], r["student"], r["method"], others), []).append(r)
        for (teacher, student, method, others), points in lines.items():
            points.sort(key=lambda r: _value_key(r[param]))
            numeric = all(_value_key(r[param])[0] == 0 for r in points)
            x = [float(r[param]) for r in points] if numeric else list(range(len(points)))
            y = [r["test_top1_selected_mean"] or 0.0 for r in points]
            err = [r["test_top1_selected_std"] or 0.0 for r in points]
            tag = ", ".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in others)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{method}: {teacher} → {student}"
                        + (f" ({tag})" if tag else ""))
            if not numeric:
                ax.set_xticks(x, [str(r[param]) for r in points])
            elif min(x) > 0 and max(x) / min(x) >= 16:
                ax.set_xscale("log")
        for student in {r["student"] for r in rows}:
            if student in baseline:
                ax.axhline(baseline[student], linestyle="--", color="grey", linewidth=1)
        ax.set_xlabel(param)
        ax.set_ylabel(METRIC)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
