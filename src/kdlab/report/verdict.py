"""The one-sentence answer at the top of the report, written from the numbers: which methods gain over their baseline,
by how much, with how many seeds and what p-value, which lose, and which rows were flagged (collapsed, diverged).

The sentence is built as segments (plain text, or a p-value) so that the HTML can put the precise test behind a
tooltip and the Markdown behind a footnote, with the same words.
"""

from __future__ import annotations

from html import escape

from kdlab.report.stats import format_p
from kdlab.report.summary import summary_rows

P_TERMS = ("two-sided paired t-test over seeds (n − 1 degrees of freedom) of the per-seed differences from the "
           "baseline of the same student; 'clearly' means p < 0.05")
POINTS_TERMS = "percentage points of test top-1 accuracy at the last epoch, mean over seeds"
FOOTNOTE = f"¹ Points: {POINTS_TERMS}. p: {P_TERMS}."
MAX_NAMED = 3  # methods named per clause; the others are counted

Segment = tuple[str, str]  # ("text", words) | ("p", formatted p-value) | ("points", "+1.23 points")


def _seeds(rows: list[dict]) -> str:
    counts = sorted({int(r.get("gain_n_seeds") or 0) for r in rows})
    return (f"{counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1
            else f"{counts[0]}–{counts[-1]} seeds")


def _named(rows: list[dict], with_sign: bool) -> list[Segment]:
    """"A by 1.20 points (p = 0.010), B by ..." (the first MAX_NAMED, then "and N more")."""
    out: list[Segment] = []
    for i, r in enumerate(rows[:MAX_NAMED]):
        mean = r["gain_top1_last_mean"]
        amount = f"{mean:+.2f} points" if with_sign else f"{abs(mean):.2f} points"
        out += [("text", (", " if i else "") + f"{r['label']} " + ("" if with_sign else "by ")),
                ("points", amount), ("text", " ("), ("p", format_p(r["gain_top1_last_p"])), ("text", ")")]
    if len(rows) > MAX_NAMED:
        out.append(("text", f" and {len(rows) - MAX_NAMED} more"))
    return out


def verdict_segments(rows: list[dict]) -> list[Segment]:
    """The sentence's segments (see the module docstring)."""
    data = summary_rows(rows)
    flagged = [r for r in rows if r.get("flags")]
    if not data:
        text = "No distilled student has a baseline of the same student to compare with"
        if flagged:
            text += "; flagged: " + ", ".join(f"{r['label']} ({r['flags']})" for r in flagged)
        return [("text", text + ".")]
    gains = [r for r in data if r["significant"] and r["gain_top1_last_mean"] > 0]
    losses = sorted((r for r in data if r["significant"] and r["gain_top1_last_mean"] < 0),
                    key=lambda r: r["gain_top1_last_mean"])
    unclear = [r for r in data if not r["significant"]]
    clauses: list[list[Segment]] = []
    if gains:
        clauses.append([("text", "better than the baseline: "), *_named(gains, False)])
    else:
        clauses.append([("text", "no method clearly beats its baseline")])
    if losses:
        clauses.append([("text", "worse than the baseline: "), *_named(losses, False)])
    if unclear:
        clauses.append([("text", "no clear difference: "), *_named(unclear, True)])
    n_min = min(int(r.get("gain_n_seeds") or 0) for r in data)
    if n_min == 2:
        clauses.append([("text", "2 seeds are weak evidence")])
    elif n_min < 2:
        clauses.append([("text", "with one seed no difference can be tested")])
    if flagged:
        clauses.append([("text", "flagged: " + ", ".join(f"{r['label']} ({r['flags']})" for r in flagged))])
    out: list[Segment] = [("text", f"With {_seeds(data)} per method, ")]
    for i, clause in enumerate(clauses):
        out += ([("text", "; ")] if i else []) + clause
    out.append(("text", "."))
    return out


def verdict_text(rows: list[dict], footnote_mark: str = "") -> str:
    """The sentence as plain text (Markdown: ``footnote_mark`` after the first p-value and "points")."""
    marked: set[str] = set()
    out = []
    for kind, value in verdict_segments(rows):
        out.append(value)
        if kind in ("p", "points") and footnote_mark and "mark" not in marked:
            out.append(footnote_mark)
            marked.add("mark")
    return "".join(out)


def verdict_html(rows: list[dict]) -> str:
    """The sentence as HTML, each p-value and amount with its precise meaning as a tooltip."""
    parts = []
    for kind, value in verdict_segments(rows):
        if kind == "p":
            parts.append(f'<abbr title="{escape(P_TERMS)}">{escape(value)}</abbr>')
        elif kind == "points":
            parts.append(f'<abbr title="{escape(POINTS_TERMS)}">{escape(value)}</abbr>')
        else:
            parts.append(escape(value))
    return f'<p class="verdict" id="verdict">{"".join(parts)}</p>'
