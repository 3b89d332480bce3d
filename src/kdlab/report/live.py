"""A live view of an experiment while its runs go on, and a local web server for the report folder.

``write_live(exp_dir)`` writes ``exp_dir/report/live.html`` from the experiment directory alone (manifest.json and the
run directories, see :mod:`kdlab.rundir`): runs done, running (epoch, ETA from metrics.jsonl), failed and waiting, and
the partial table of the runs done, with their gains over the baseline paired by seed. It evaluates nothing: its
accuracies are what each run logged in result.json (the full report recomputes every number from the checkpoints).
While runs are left, the page reloads itself every 10 seconds.

``serve(folder)`` serves a folder on 127.0.0.1 (standard library only) until ``server.shutdown()``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from html import escape
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kdlab.expdir import Manifest, PlannedRun
from kdlab.files import write_text
from kdlab.report.stats import format_p, paired_t_p
from kdlab.report.table import format_mean_std, mean_std, paired_gain, row_key, row_label

LIVE_FILE = "live.html"
REFRESH_S = 10
FINAL_STATES = ("done", "failed", "given")


@dataclass
class RunStatus:
    """Where one run of the manifest stands."""

    spec: PlannedRun
    state: str  # done | running | failed | waiting | given (a teacher checkpoint, not trained here)
    epoch: int = 0  # epochs finished (metrics.jsonl)
    epochs: int | None = None  # epochs planned (config.yaml)
    eta_s: float | None = None  # seconds left, from the mean training time of its epochs so far
    result: dict | None = None
    error: str | None = None


def run_status(spec: PlannedRun) -> RunStatus:
    """The state of one run from its directory's files."""
    if spec.given_checkpoint is not None:
        return RunStatus(spec, "given")
    files = spec.files
    epochs = (files.read_config() or {}).get("epochs")
    epochs = int(epochs) if isinstance(epochs, (int, float)) else None
    history = files.read_history()
    epoch = int(history[-1].get("epoch") or len(history)) if history else files.epochs_done()
    if files.finished():
        return RunStatus(spec, "done", epoch, epochs, result=files.read_result() or {})
    failure = files.read_failure()
    if failure:
        return RunStatus(spec, "failed", epoch, epochs, error=str(failure.get("error")))
    if not spec.run_dir.is_dir():
        return RunStatus(spec, "waiting", 0, epochs)
    times = [float(r["train_time_s"]) for r in history if isinstance(r.get("train_time_s"), (int, float))]
    eta = (epochs - epoch) * sum(times) / len(times) if times and epochs else None
    return RunStatus(spec, "running", epoch, epochs, eta)


def experiment_status(exp_dir: str | Path) -> tuple[Manifest, list[RunStatus]]:
    """The manifest and every run's status, in the manifest's order."""
    manifest = Manifest.read(Path(exp_dir))
    return manifest, [run_status(spec) for spec in manifest.runs]


def finished(statuses: list[RunStatus]) -> bool:
    """Whether no run is left to train (each is done, failed or a given checkpoint)."""
    return all(s.state in FINAL_STATES for s in statuses)


def partial_rows(statuses: list[RunStatus]) -> list[dict]:
    """One row per (role, teacher, student, method) with runs done: their logged test top-1 (last epoch and
    val-selected) mean ± std, and students' gains over the baseline of the same student paired by seed, with p."""
    groups: dict[tuple, list[RunStatus]] = {}
    planned: dict[tuple, int] = {}
    for s in statuses:
        planned[row_key(s.spec)] = planned.get(row_key(s.spec), 0) + 1
        if s.state == "done":
            groups.setdefault(row_key(s.spec), []).append(s)

    def by_seed(runs: list[RunStatus], name: str) -> dict[int, float]:
        return {r.spec.seed: float((r.result or {})[name]) for r in runs if (r.result or {}).get(name) is not None}

    baselines = {k[2]: v for k, v in groups.items() if k[0] == "baseline"}
    rows = []
    for key, runs in groups.items():
        row = {"label": row_label(key), "role": key[0], "done": len(runs), "planned": planned[key]}
        for name, field in (("top1_last", "test_top1"), ("top1_selected", "selected_test_top1")):
            row[name] = mean_std(by_seed(runs, field).values())
        if key[0] == "student" and key[2] in baselines:
            mean, se, n = paired_gain(by_seed(runs, "test_top1"), by_seed(baselines[key[2]], "test_top1"))
            row["gain"] = (mean, se, n, paired_t_p(mean, se, n)[1]) if n else None
        rows.append(row)
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _status_table(statuses: list[RunStatus]) -> str:
    body = []
    for s in statuses:
        progress = f"{s.epoch}/{s.epochs or '?'}" if s.state in ("running", "done", "failed") else "–"
        detail = s.error or ""
        top1 = (s.result or {}).get("test_top1")
        if s.state == "done" and top1 is not None:
            detail = f"test top-1 {float(top1):.2f}%"
        body.append(f'<tr class="state-{s.state}"><td>{escape(s.spec.key)}</td><td>{escape(row_label(row_key(s.spec)))}'
                    f"</td><td>{s.spec.seed}</td><td>{s.state}</td><td class=num>{progress}</td>"
                    f"<td class=num>{_duration(s.eta_s)}</td><td>{escape(detail)}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Run", "Row", "Seed", "State", "Epoch", "ETA", ""))
    return (f'<div class="table-wrap"><table id="status"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


def _rows_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        gain = r.get("gain")
        gain_text = "–"
        if gain:
            spread = "–" if gain[1] != gain[1] else f"{gain[1]:.2f}"  # nan (one seed): no standard error
            gain_text = f"{gain[0]:+.2f} ± {spread} ({format_p(gain[3])}, {gain[2]} seeds)"
        body.append(f"<tr><td>{escape(r['label'])}</td><td class=num>{r['done']}/{r['planned']}</td>"
                    f"<td class=num>{format_mean_std(*r['top1_last'])}</td>"
                    f"<td class=num>{format_mean_std(*r['top1_selected'])}</td><td class=num>{escape(gain_text)}</td>"
                    "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Row", "Seeds done", "Test top-1 last (%)", "Test top-1 val-selected (%)",
                                             "Gain over baseline, last epoch (points)"))
    return (f'<div class="table-wrap"><table id="partial"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


CSS = ("body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:1rem auto;max-width:1400px;"
       "padding:0 1rem;color:#222}.table-wrap{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem}"
       "th,td{border:1px solid #ddd;padding:.3rem .55rem}th{background:#f3f5f8}td.num{text-align:right}"
       "tr.state-running td{background:#fff8e1}tr.state-failed td{background:#fdecea}"
       "tr.state-done td{background:#eef7ee}.meta{color:#555}")


def live_html(exp_dir: str | Path) -> str:
    """The live page of an experiment directory (see the module docstring)."""
    manifest, statuses = experiment_status(exp_dir)
    counts = {state: sum(s.state == state for s in statuses) for state in ("done", "running", "failed", "waiting")}
    done = finished(statuses)
    refresh = "" if done else f'<meta http-equiv="refresh" content="{REFRESH_S}">'
    running_eta = [s.eta_s for s in statuses if s.state == "running" and s.eta_s is not None]
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) + f" of {len(statuses)} runs"
    rows = partial_rows(statuses)
    parts = ["<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8">{refresh}',
             f"<title>{escape(manifest.name)} — live</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(manifest.name)}</h1>",
             f'<p class="meta" id="progress">{escape(summary)}'
             + (f" · current run: about {_duration(running_eta[0])} left" if running_eta else "")
             + (" · finished: <a href=\"index.html\">the full report</a>" if done
                else f" · this page reloads every {REFRESH_S} s") + "</p>",
             "<h2>Runs</h2>", _status_table(statuses), "<h2>Runs done so far</h2>",
             _rows_table(rows) if rows else "<p>No run finished yet.</p>",
             '<p class="meta">Accuracies as each run logged them (result.json); gains are paired by seed with the '
             "baseline of the same student (mean ± standard error, p: paired t-test over seeds). The full report "
             "recomputes every number from the saved checkpoints.</p></body></html>"]
    return "\n".join(parts) + "\n"


def write_live(exp_dir: str | Path) -> Path:
    """Write (or refresh) ``exp_dir/report/live.html``; return its path. Cheap (reads small files only): call it after
    each run, or every few seconds."""
    out = Path(exp_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    path = out / LIVE_FILE
    write_text(path, live_html(exp_dir))
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """No line per request on the console."""


def serve(directory: str | Path, port: int = 0) -> tuple[str, ThreadingHTTPServer]:
    """Serve ``directory`` on http://127.0.0.1:PORT/ (``port=0``: a free port) from a background thread; return the
    URL and the server (``server.shutdown()`` stops it)."""
    handler = functools.partial(_QuietHandler, directory=str(Path(directory).resolve()))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, name="kdlab-report-server", daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server
