"""index.html: one self-contained page (inline CSS, relative image links, no JavaScript) that opens from disk."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Callable

from kdlab.report.summary import header_cell, summary_html
from kdlab.report.table import deploy_columns, display_columns, display_value
from kdlab.report.verdict import verdict_html
from kdlab.report.write import write_text

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1rem auto 2rem; max-width: 1400px;
       padding: 0 1rem; color: #222; line-height: 1.45; box-sizing: border-box; }
h1 { margin: 0 0 0.2rem; font-size: 1.7rem; }
h2 { margin-top: 1.6rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; font-size: 1.3rem; }
.meta { color: #555; margin-bottom: 0.6rem; }
.verdict { font-size: 1.1rem; background: #f6f8fb; border-left: 4px solid #1f4e79; padding: 0.5rem 0.8rem;
           margin: 0.6rem 0; }
abbr[title] { text-decoration: underline dotted; cursor: help; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.55rem; }
th { background: #f3f5f8; position: sticky; top: 0; white-space: normal; min-width: 3.5rem; max-width: 9rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.role-teacher td { background: #fbf8ef; } tr.role-baseline td { background: #f3f7fb; }
tr.best td { font-weight: 600; } table.summary tr.win td { background: #eaf5ea; }
table.summary tr.loss td { background: #fbeeee; } tr.flagged td { background: #fdecea; color: #8a1c13; }
p.note, figcaption { color: #555; font-size: 0.9rem; }
figure { margin: 1rem 0; min-width: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; } .figs figure { flex: 1 1 560px; }
.figs figure.wide { flex: 1 1 100%; }
li, p { overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


GAINS_TITLE = "Gains over the baseline"
NARROW_PX = 700  # figures at most this wide (px) share a row; wider ones get the page's width

NUM = ' class="num"'


def rows_table_html(rows: list[dict], top5: bool, best_label: str | None) -> str:
    """The wide table of every row (one ``<table>`` in a horizontally scrolling box)."""
    cols = display_columns(top5, flags=any(row.get("flags") for row in rows)) + deploy_columns(rows)
    head = "".join(header_cell(c) for c in cols)
    body = []
    for row in rows:
        classes = f"role-{row['role']}" + (" best" if row["label"] == best_label else "") + \
            (" flagged" if row.get("flags") else "")
        cells = "".join(f"<td{'' if c.kind == 'text' else NUM}>{escape(display_value(row, c))}</td>" for c in cols)
        body.append(f'<tr class="{classes}">{cells}</tr>')
    return (f'<div class="table-wrap"><table id="rows-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's header; None when it is not a readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def figure_html(folder: Path, name: str, caption: str, src: str | None = None, full_width: bool = False) -> str:
    """A ``<figure>`` shown at most at its natural size (no blurry upscaling); wide ones take the whole row.
    ``src``: what the ``<img>`` loads (default: ``name``, relative to the report); ``full_width``: the image spans
    its container (``width:100%``, the notebook's view)."""
    size = png_size(folder / name)
    attrs = f' width="{size[0]}" height="{size[1]}"' if size and not full_width else ""
    attrs += ' style="width:100%;height:auto"' if full_width else ""
    cls = ' class="wide"' if full_width or (size and size[0] > NARROW_PX) else ""
    return (f'<figure{cls}><img src="{escape(src or name)}" alt="{escape(caption)}"{attrs}>'
            f'<figcaption>{escape(caption)}</figcaption></figure>')


def sections_html(folder: Path, rows: list[dict], top5: bool, figures: dict[str, list[tuple[str, str]]],
                  best_label: str | None, precision: str, src: Callable[[str], str] | None = None) -> list[str]:
    """The page's body after the title: verdict, gains (table, note, figure), all rows, the other figures.
    ``src`` maps a figure's file name to what ``<img src>`` says; given (the notebook inlines the images), each
    figure spans the whole width."""
    link = src or (lambda name: name)
    full = src is not None
    parts = [verdict_html(rows)]
    gains_figs = "".join(figure_html(folder, n, c, link(n), full) for n, c in figures.get(GAINS_TITLE, []))
    if answer := summary_html(rows):
        parts.append(f'<h2 id="gains">{GAINS_TITLE}</h2>{answer}<div class="figs">{gains_figs}</div>')
    parts += [
        '<h2 id="rows">All rows</h2>', rows_table_html(rows, top5, best_label),
        '<p class="note">Mean ± sample std over seeds (– with one seed). Gains: mean of per-seed differences from the '
        "baseline of the same student (paired by seed), in percentage points, ± standard error; p-value: paired "
        "t-test over seeds. Every number is recomputed from the saved checkpoints on the test split in "
        f"{escape(precision)}; agreement and KL compare with the teacher run's last-epoch predictions.</p>",
    ]
    for section, items in figures.items():
        if items and section != GAINS_TITLE:
            parts.append(f"<h2>{escape(section)}</h2><div class=\"figs\">")
            parts += [figure_html(folder, name, caption, link(name), full) for name, caption in items]
            parts.append("</div>")
    return parts


def write_html(path: Path, header: dict, rows: list[dict], top5: bool, figures: dict[str, list[tuple[str, str]]],
               notes: list[str], best_label: str | None) -> None:
    """``figures``: section name -> [(png file name relative to the report, caption)]."""
    dataset = header["dataset"]
    seeds = ", ".join(map(str, header["seeds"])) or "–"
    precision = str(header.get("precision", "fp32"))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(header['name'])} — kdlab report</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(header['name'])}</h1>",
        f'<div class="meta">Dataset <b>{escape(str(dataset.get("name")))}</b> · seeds {escape(seeds)} · '
        f"evaluated in {escape(precision)} · {len(rows)} rows · data: <a href=\"results.csv\">results.csv</a> · "
        "<a href=\"results.json\">results.json</a> · <a href=\"results.md\">results.md</a></div>",
        *sections_html(path.parent, rows, top5, figures, best_label, precision),
    ]
    parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<details><summary>Dataset settings</summary><pre>{escape(json.dumps(dataset, indent=2))}</pre>"
                 "</details></body></html>")
    write_text(path, "\n".join(parts) + "\n")
