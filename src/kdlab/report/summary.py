"""The answer first: each distilled student's gain over its own baseline, paired by seed, and whether it is more than
noise — then the wide table.

A difference counts as clear when the two-sided p-value of a paired t-test over seeds (n − 1 degrees of freedom, see
:mod:`kdlab.report.stats`) is below 0.05. With 2 seeds that needs |t| > 12.71, and the verdict says "2 seeds: weak
evidence"; with one seed, or identical per-seed differences, there is no test and nothing is called clear.
"""

from __future__ import annotations

from html import escape

from kdlab.report.stats import ALPHA, paired_t_p
from kdlab.report.table import GAIN_TIP, P_TIP, Display, display_value

COLUMNS = [
    Display("Method", "label", "text"),
    Display("Gain over baseline, last epoch (points)", "gain_top1_last", "gain", tip=GAIN_TIP),
    Display("p-value", "gain_top1_last_p", "p", tip=P_TIP),
    Display("Verdict", "verdict", "text"),
    Display("Gain, val-selected epoch (points)", "gain_top1_selected", "gain", tip=GAIN_TIP),
    Display("p-value (val-selected)", "gain_top1_selected_p", "p", tip=P_TIP),
    Display("Top-1 last (%)", "test_top1_last"),
    Display("Agreement with teacher (%)", "teacher_agreement",
            tip="Share of test images where the student's top-1 class is the teacher's."),
    Display("Train time (s)", "train_time_s", "number", 1),
    Display("Seeds", "gain_n_seeds", "text"),
]


def verdict_words(mean: float, p: float | None, n: int, flagged: bool = False) -> str:
    """"better", "worse", "no clear difference" or "no test (1 seed)", from the p-value; 2 seeds say they are weak."""
    if p is None:
        words = "no test (1 seed)" if n < 2 else "no test (identical differences)"
    elif p < ALPHA:
        words = "better" if mean > 0 else "worse"
    else:
        words = "no clear difference"
    if n == 2:
        words += "; 2 seeds: weak evidence"
    return words + (" (flagged)" if flagged else "")


def summary_rows(rows: list[dict]) -> list[dict]:
    """The distilled students' rows with a gain, best gain first, each with ``gain_t``, ``gain_top1_last_p``,
    ``significant`` (p < 0.05; None without a test) and ``verdict`` (words)."""
    out = []
    for row in rows:
        if row.get("role") != "student" or row.get("gain_top1_last_mean") is None:
            continue
        mean, se, n = row["gain_top1_last_mean"], row.get("gain_top1_last_se"), row.get("gain_n_seeds") or 0
        t, p = paired_t_p(mean, se, n)
        out.append({**row, "gain_t": t, "gain_top1_last_p": p, "significant": None if p is None else p < ALPHA,
                    "verdict": verdict_words(mean, p, n, bool(row.get("flags")))})
    return sorted(out, key=lambda r: -r["gain_top1_last_mean"])


def significant_gains(rows: list[dict]) -> int:
    """How many methods gain clearly (p < 0.05, paired t-test over seeds)."""
    return sum(1 for r in summary_rows(rows) if r["significant"] and r["gain_top1_last_mean"] > 0)


NOTE = ("Gains are paired by seed: the mean over seeds of (method − baseline of the same student), in percentage "
        "points of test top-1, ± the standard error of that mean. The p-value is a two-sided paired t-test over seeds "
        "with n − 1 degrees of freedom; 'better' / 'worse' mean p < 0.05, which 2 seeds reach only when the gain is "
        "more than 12.7 standard errors (weak evidence either way). No correction for comparing many methods.")


def summary_markdown(rows: list[dict]) -> str:
    data = summary_rows(rows)
    if not data:
        return ""
    lines = ["| " + " | ".join(c.header for c in COLUMNS) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(display_value(r, c).replace("|", "\\|") for c in COLUMNS) + " |" for r in data]
    return "\n".join(lines)


def header_cell(col: Display) -> str:
    """A ``<th>``, its precise meaning as a tooltip when it has one."""
    text = escape(col.header)
    return f'<th><abbr title="{escape(col.tip)}">{text}</abbr></th>' if col.tip else f"<th>{text}</th>"


def summary_table_html(rows: list[dict]) -> str:
    """The gains table alone (one ``<table>`` in a horizontally scrolling box), or "" without gains."""
    data = summary_rows(rows)
    if not data:
        return ""
    head = "".join(header_cell(c) for c in COLUMNS)
    body = []
    for r in data:
        cls = "" if not r["significant"] else "win" if r["gain_top1_last_mean"] > 0 else "loss"
        cells = "".join(f'<td{"" if c.kind == "text" else " class=num"}>{escape(display_value(r, c))}</td>'
                        for c in COLUMNS)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return (f'<div class="table-wrap"><table class="summary" id="gains-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def summary_html(rows: list[dict]) -> str:
    table = summary_table_html(rows)
    return f'{table}<p class="note">{escape(NOTE)}</p>' if table else ""
