"""Experiment reports: ``build_report(exp_dir)`` writes ``exp_dir/report/`` (tables, figures, index.html).

    from kdlab.report import build_report
    build_report("experiments/fmnist-kd", device="cpu", log=print)

Every metric is recomputed from the runs' saved checkpoints on the test split (cached per run, see
:mod:`kdlab.report.evalcache`), so a second report of a finished experiment takes seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from kdlab.engine.device import resolve_device
from kdlab.expdir import MANIFEST_FILE, Manifest, ReportError
from kdlab.plugins import check_trusted, import_modules
from kdlab.report.browser import keep_first_screen
from kdlab.report.calibration import ReliabilityBins, expected_calibration_error, reliability_bins
from kdlab.report.collect import Collected, RunEval, TestData, collect, efficiency_by_label
from kdlab.report.efficiency import LATENCY_NOTE, count_parameters, flops_per_image, latency_ms
from kdlab.report.html import GAINS_TITLE, write_html
from kdlab.report.notebook import notebook_html
from kdlab.report.scaling import scale_notes
from kdlab.report.sweep import write_sweep
from kdlab.report.table import (RowKey, build_rows, format_mean_std, group_runs, paired_gain, row_label, row_slug,
                                run_record)
from kdlab.report.write import SELECTION_NOTE, write_csv, write_markdown, write_results_json

__all__ = ["build_report", "expected_calibration_error", "reliability_bins", "ReliabilityBins", "paired_gain",
           "format_mean_std", "flops_per_image", "count_parameters", "latency_ms", "ReportError", "notebook_html"]


PRECISION = "fp32"  # what the report evaluates in (kdlab.report.collect runs every model without autocast)


def _silent(message: str) -> None:
    """The default ``log``: the report prints nothing unless asked to."""


def build_report(exp_dir: str | Path, device: str = "cpu", log: Callable[[str], None] = _silent,
                 data: Any = None, models: dict[str, Callable] | None = None, imports: Sequence[str] = (),
                 trust_code: bool = False, screenshot: bool = True) -> Path:
    """Write ``results.{csv,json,md}``, the figures and ``index.html`` into ``exp_dir/report``; return that folder.

    ``data`` / ``models``: the Python API's in-process Dataset objects and model factories (see ``TestData``).
    ``imports``: the plug-in modules the user named (``--import``, the experiment's ``imports:``); a module that the
    manifest or a weights file names is imported only if it is among them, or with ``trust_code=True``.
    ``screenshot``: also keep ``first_screen.png``, the page's first 1,400 x 900 pixels, when Chromium is installed.
    """
    exp_dir = Path(exp_dir)
    manifest = Manifest.read(exp_dir)
    # importing a module this process has already imported runs nothing (the Python API's own objects' modules)
    check_trusted([m for m in manifest.imports if m not in sys.modules], imports, trust_code,
                  str(exp_dir / MANIFEST_FILE))
    import_modules(manifest.imports)
    test_data = TestData(manifest.dataset, resolve_device(device), data, models, imports=imports,
                         trust_code=trust_code)
    collected = collect(manifest, test_data, log)
    if not collected.runs:
        reasons = "; ".join(f"{s['key']}: {s['reason']}" for s in collected.errors + collected.skipped) \
            or "the manifest lists no runs"
        raise ReportError(f"no finished run to report in {exp_dir} ({reasons})")
    log(f"{sum(r.cache_hit for r in collected.runs)} of {len(collected.runs)} runs' test metrics from their caches")
    efficiency = efficiency_by_label(collected.runs, test_data, log)
    top5 = max(int(r.cache.get("num_classes", 0)) for r in collected.runs) > 5
    rows = build_rows(collected.runs, efficiency, top5, collected.diverged)
    out = exp_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    header = {"name": manifest.name, "dataset": manifest.dataset, "seeds": manifest.seeds, "precision": PRECISION}
    notes = [SELECTION_NOTE, *_notes(collected), *scale_notes(collected.runs)]
    figures, best = _figures(collected.runs, rows, out)
    figures.update(write_sweep(collected.runs, out))  # sweep.md/.csv/.png when the experiment swept
    write_csv(out / "results.csv", rows)
    write_results_json(out / "results.json", header, rows, [run_record(r) for r in collected.runs],
                       [*collected.skipped, *({**e, "error": True} for e in collected.errors)], notes,
                       {"top5": top5, "best": best, "figures": figures})
    write_markdown(out / "results.md", header, rows, top5, notes)
    write_html(out / "index.html", header, rows, top5, figures, notes, best)
    if screenshot:
        keep_first_screen(out, log)
    log(f"report written to {out / 'index.html'}")
    if collected.errors:  # finished runs missing from the tables: never silently
        first = collected.errors[0]
        raise ReportError(f"the report in {out} lacks {len(collected.errors)} finished run(s) it could not evaluate: "
                          f"{first['run_dir']}: {first['reason']}")
    return out


def _notes(collected: Collected) -> list[str]:
    notes = [f"skipped {s['key']} ({s['run_dir']}): {s['reason']}" for s in collected.skipped]
    notes += [f"NOT EVALUATED {s['key']} ({s['run_dir']}), a finished run: {s['reason']}" for s in collected.errors]
    notes.append(f"Every metric is recomputed in {PRECISION} (no autocast), whatever precision the runs trained in; "
                 "`kdlab eval` uses each run's own precision, so its numbers may differ in the last digits.")
    notes += collected.notes
    for run in collected.runs:
        source = run.selected.get("source")
        if source == "model.safetensors":
            notes.append(f"{run.spec.key}: no best.safetensors (empty validation split), so val-selected = last epoch")
        elif source == "checkpoint":
            notes.append(f"{run.spec.key}: teacher given as a finished checkpoint ({run.spec.shown_path}), not trained "
                         "here: its 'val-selected' value is that checkpoint's, and it has no curves or train time")
    notes.append("Every test metric is computed in fp32 from the saved weights, whatever precision the run trained "
                 "in. NLL, ECE (15 equal-width confidence bins), agreement and KL use the last-epoch weights. FLOPs: "
                 "PyTorch's flop counter, one forward pass of one image (a multiply-add counts 2). " + LATENCY_NOTE)
    return notes


def _featured(rows: list[dict], groups: dict[RowKey, list[RunEval]]) -> list[RowKey]:
    """The rows shown in detail: the best method (by mean val-selected test top-1), its teacher and baseline."""
    by_label = {row_label(k): k for k in groups}
    students = [r for r in rows if r["role"] == "student" and r.get("test_top1_selected_mean") is not None]
    best = max(students, key=lambda r: r["test_top1_selected_mean"]) if students else None
    teacher = next((k for k in groups if k[0] == "teacher" and (best is None or k[2] == best["teacher"])), None)
    baseline = next((k for k in groups if k[0] == "baseline" and (best is None or k[2] == best["student"])), None)
    chosen = [teacher, baseline, by_label[best["label"]] if best else None]
    return [k for k in chosen if k is not None]


def _figures(runs: list[RunEval], rows: list[dict], out: Path) -> tuple[dict[str, list[tuple[str, str]]], str | None]:
    # matplotlib loads only when a report draws (workers and the live page import this package)
    from kdlab.report.figures import (accuracy_figure, confusion_figure, curves_figure, gains_figure,
                                      reliability_figure)

    groups = group_runs(runs)
    featured = _featured(rows, groups)
    for stale in out.glob("confusion_*.png"):  # a previous report may have featured other rows
        stale.unlink()
    gains = gains_figure(rows, out / "gains.png")
    accuracy_figure(rows, out / "accuracy.png")
    curves_figure([(row_label(k), [r.history for r in g]) for k, g in groups.items()], out / "curves.png")
    confusions = []
    for key in featured:
        group = groups[key]
        name = f"confusion_{row_slug(key)}.png"
        total = sum((r.confusion for r in group[1:]), group[0].confusion.clone())
        confusion_figure(total, group[0].class_names, f"{row_label(key)} — last epoch, {len(group)} seed(s) pooled",
                         out / name)
        confusions.append((name, f"Confusion matrix: {row_label(key)} (test, summed over seeds)"))
    panels = [(row_label(k), sum((r.bins for r in groups[k][1:]), groups[k][0].bins)) for k in featured]
    reliability_figure(panels, out / "reliability.png")
    best = row_label(featured[-1]) if featured and featured[-1][0] == "student" else None
    figures = {
        GAINS_TITLE: [("gains.png", "Each method's test top-1 gain over the baseline of the same student, paired by "
                                    "seed: black = ± 1 standard error, grey = 95% confidence interval (t, n − 1 df); "
                                    "dark bars: p < 0.05")]
        if gains else [],
        "Accuracy": [("accuracy.png", "Test top-1 per row: last epoch and val-selected epoch (± std over seeds)")],
        "Learning curves": [("curves.png", "Train loss and validation top-1 per epoch (mean ± std over seeds)")],
        "Confusion matrices": confusions,
        "Calibration": [("reliability.png", "Reliability diagrams (last epoch, pooled over seeds)")],
    }
    return figures, best
