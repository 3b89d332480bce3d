"""index.html: one self-contained page (inline CSS, relative image links, no JavaScript) that opens from disk."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from kdlab.report.summary import summary_html
from kdlab.report.table import deploy_columns, display_columns, display_value
from kdlab.report.write import write_text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; margin-bottom: 1rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.55rem; }
th { background: #f3f5f8; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.role-teacher td { background: #fbf8ef; } tr.role-baseline td { background: #f3f7fb; }
tr.best td { font-weight: 600; } table.summary tr.win td { background: #eaf5ea; }
table.summary tr.loss td { background: #fbeeee; } tr.flagged td { background: #fdecea; color: #8a1c13; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; } .figs figure { flex: 1 1 420px; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


NUM = ' class="num"'


def _table(rows: list[dict], top5: bool, best_label: str | None) -> str:
    cols = display_columns(top5, flags=any(row.get("flags") for row in rows)) + deploy_columns(rows)
    head = "".join(f"<th>{escape(c.header)}</th>" for c in cols)
    body = []
    for row in rows:
        classes = f"role-{row['role']}" + (" best" if row["label"] == best_label else "") + \
            (" flagged" if row.get("flags") else "")
        cells = "".join(f"<td{'' if c.kind == 'text' else NUM}>{escape(display_value(row, c))}</td>" for c in cols)
        body.append(f'<tr class="{classes}">{cells}</tr>')
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure(name: str, caption: str) -> str:
    return (f'<figure><img src="{escape(name)}" alt="{escape(caption)}">'
            f'<figcaption>{escape(caption)}</figcaption></figure>')


def write_html(path: Path, header: dict, rows: list[dict], top5: bool, figures: dict[str, list[tuple[str, str]]],
               notes: list[str], best_label: str | None) -> None:
    """``figures``: section name -> [(png file name relative to the report, caption)]."""
    dataset = header["dataset"]
    seeds = ", ".join(map(str, header["seeds"])) or "–"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(header['name'])} — kdlab report</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(header['name'])}</h1>",
        f'<div class="meta">Dataset <b>{escape(str(dataset.get("name")))}</b> · seeds {escape(seeds)} · '
        f'evaluated in {escape(str(header.get("precision", "fp32")))} · '
        f"{len(rows)} rows · data: <a href=\"results.csv\">results.csv</a> · <a href=\"results.json\">results.json</a>"
        f" · <a href=\"results.md\">results.md</a></div>",
        *([f"<h2>Gains over the baseline</h2>{answer}"] if (answer := summary_html(rows)) else []),
        "<h2>All rows</h2>", _table(rows, top5, best_label),
        "<p>Mean ± sample std over seeds (– with one seed). Gains: mean of per-seed differences from the baseline of "
        "the same student (paired by seed) ± standard error. Every number is recomputed from the saved checkpoints "
        f"on the test split in {escape(str(header.get('precision', 'fp32')))}; "
        "agreement and KL compare with the teacher run's last-epoch predictions.</p>",
    ]
    for section, items in figures.items():
        if items:
            parts.append(f"<h2>{escape(section)}</h2><div class=\"figs\">")
            parts += [_figure(name, caption) for name, caption in items]
            parts.append("</div>")
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<details><summary>Dataset settings</summary><pre>{escape(json.dumps(dataset, indent=2))}</pre>"
                 "</details></body></html>")
    write_text(path, "\n".join(parts) + "\n")
