"""The report inline in Jupyter: the page's verdict, tables and figures as one HTML fragment (for
``Report._repr_html_``), rebuilt from ``results.json`` and the PNGs, with each figure inlined at full width."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from kdlab.report.html import GAINS_TITLE, sections_html

# Reports written before results.json listed its figures: the files the page shows, when present.
DEFAULT_FIGURES = {GAINS_TITLE: [("gains.png", "Gains over the baseline")], "Accuracy": [("accuracy.png", "Accuracy")],
                   "Learning curves": [("curves.png", "Learning curves")],
                   "Calibration": [("reliability.png", "Reliability diagrams")]}


def _inline(folder: Path):
    def src(name: str) -> str:
        return "data:image/png;base64," + base64.b64encode((folder / name).read_bytes()).decode()

    return src


def notebook_html(report_dir: str | Path) -> str:
    """The report in ``report_dir`` (its results.json and figures) as an HTML fragment: the verdict, the gains table
    and the table of all rows as separate ``<table>`` elements, every figure inlined with ``width:100%``."""
    folder = Path(report_dir)
    data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    rows = list(data.get("rows") or [])
    figures = {section: [(name, caption) for name, caption in items if (folder / name).is_file()]
               for section, items in (data.get("figures") or DEFAULT_FIGURES).items()}
    top5 = bool(data.get("top5", any(r.get("test_top5_last_mean") is not None for r in rows)))
    dataset = (data.get("dataset") or {}).get("name")
    seeds = ", ".join(map(str, data.get("seeds") or [])) or "–"
    precision = str(data.get("precision", "fp32"))
    head = (f"<h3>{escape(str(data.get('name')))}</h3><div>Dataset <b>{escape(str(dataset))}</b> · seeds "
            f"{escape(seeds)} · evaluated in {escape(precision)} · {len(rows)} rows · {escape(str(folder))}</div>")
    body = sections_html(folder, rows, top5, figures, data.get("best"), precision, src=_inline(folder))
    return f'<div class="kdlab-report">{head}{"".join(body)}</div>'
