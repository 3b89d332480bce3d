"""results.csv / results.json / results.md: the same rows, full precision in CSV and JSON, rounded in Markdown."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from kdlab.files import json_safe
from kdlab.report.summary import NOTE as SUMMARY_NOTE
from kdlab.report.summary import summary_markdown, summary_rows
from kdlab.report.table import deploy_columns, display_columns, display_value
from kdlab.report.verdict import FOOTNOTE, verdict_text

SELECTION_NOTE = ("\"val-selected\" is the epoch with the best top-1 on the validation split (held out from train); "
                  "the test split never selects anything. \"last\" is the final epoch.")


def write_text(path: Path, text: str) -> None:
    """Report files are plain writes (ordinary permissions, UTF-8): they are rebuilt from the runs at any time."""
    path.write_text(text, encoding="utf-8")


def csv_columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                         for k, v in row.items()})
    write_text(path, buf.getvalue())


SUMMARY_KEYS = ("label", "gain_top1_last_mean", "gain_top1_last_se", "gain_t", "gain_top1_last_p", "significant",
                "verdict", "gain_top1_selected_mean", "gain_top1_selected_se", "gain_top1_selected_p", "gain_n_seeds")


def write_results_json(path: Path, header: dict, rows: list[dict], runs: list[dict], skipped: list[dict],
                       notes: list[str], extra: dict | None = None) -> None:
    """``extra``: what the page is drawn from besides the rows (``best``, ``figures``), so a notebook redraws it."""
    summary = [{k: r.get(k) for k in SUMMARY_KEYS} for r in summary_rows(rows)]
    payload = {**header, "verdict": verdict_text(rows), "summary": summary, "columns": csv_columns(rows),
               "rows": rows, "runs": runs, "skipped": skipped, "notes": notes, **(extra or {})}
    write_text(path, json.dumps(json_safe(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def markdown_table(rows: list[dict], top5: bool) -> str:
    cols = display_columns(top5, flags=any(row.get("flags") for row in rows)) + deploy_columns(rows)
    lines = ["| " + " | ".join(c.header for c in cols) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(display_value(row, c).replace("|", "\\|") for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, header: dict, rows: list[dict], top5: bool, notes: list[str]) -> None:
    dataset = header["dataset"]
    answer = summary_markdown(rows)
    text = [f"# {header['name']}", "",
            f"Dataset: **{dataset.get('name')}** · seeds: {', '.join(map(str, header['seeds'])) or '–'}"
            f" · evaluated in {header.get('precision', 'fp32')}", "",
            f"**{verdict_text(rows, footnote_mark='¹')}**", "", FOOTNOTE, "",
            *(["## Gains over the baseline", "", answer, "", SUMMARY_NOTE, "", "## All rows", ""] if answer else []),
            markdown_table(rows, top5), "",
            "Mean ± sample std over seeds (– with one seed); gains are paired by seed over the baseline of the same "
            "student (mean ± standard error, in percentage points; p-value: paired t-test over seeds). Metrics are "
            "recomputed from the saved checkpoints on the test split "
            f"in {header.get('precision', 'fp32')}.", "",
            "## Notes", ""]
    text += [f"- {note}" for note in notes]
    write_text(path, "\n".join(text) + "\n")
