"""The answer first: each distilled student's gain over its own baseline, paired by seed, and whether it is more than
noise — then the wide table.

A gain counts as significant here when it exceeds twice its standard error (the standard error of the mean of the
per-seed differences, n − 1 degrees of freedom): a rough two-sided test, stated as such in the report. With one seed
there is no standard error, and nothing is called significant.
"""

from __future__ import annotations

from html import escape

from kdlab.report.table import Display, display_value

SIGNIFICANCE_SE = 2.0

COLUMNS = [
    Display("Method", "label", "text"),
    Display("Gain over baseline (pp, last epoch, ± SE)", "gain_top1_last", "gain"),
    Display("Gain / SE", "gain_t", "number", 1),
    Display("More than 2 SE", "significant", "text"),
    Display("Gain, val-selected (pp, ± SE)", "gain_top1_selected", "gain"),
    Display("Top-1 last (%)", "test_top1_last"),
    Display("Agreement w/ teacher (%)", "teacher_agreement"),
    Display("Train time (s)", "train_time_s", "number", 1),
    Display("Seeds", "gain_n_seeds", "text"),
]


def summary_rows(rows: list[dict]) -> list[dict]:
    """The distilled students' rows with a gain, best gain first, each with ``gain_t`` and ``significant``."""
    out = []
    for row in rows:
        if row.get("role") != "student" or row.get("gain_top1_last_mean") is None:
            continue
        mean, se, n = row["gain_top1_last_mean"], row.get("gain_top1_last_se"), row.get("gain_n_seeds") or 0
        t = mean / se if se and n > 1 else None
        verdict = "–" if t is None else ("yes" if abs(t) > SIGNIFICANCE_SE else "no")
        if verdict == "yes":
            verdict = "yes, a gain" if mean > 0 else "yes, a loss"
        out.append({**row, "gain_t": t, "significant": verdict + (" (flagged)" if row.get("flags") else "")})
    return sorted(out, key=lambda r: -r["gain_top1_last_mean"])


def significant_gains(rows: list[dict]) -> int:
    """How many methods gain more than twice their standard error."""
    return sum(1 for r in summary_rows(rows) if (r["gain_t"] or 0) > SIGNIFICANCE_SE)


NOTE = ("Gains are paired by seed: the mean over seeds of (method − baseline of the same student), "
        "± the standard error of that mean. 'More than 2 SE' is a rough two-sided test (|gain| > 2 standard errors), "
        "not a correction for comparing many methods.")


def summary_markdown(rows: list[dict]) -> str:
    data = summary_rows(rows)
    if not data:
        return ""
    lines = ["| " + " | ".join(c.header for c in COLUMNS) + " |",
             "|" + "|".join("---" if c.kind == "text" else "---:" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(display_value(r, c).replace("|", "\\|") for c in COLUMNS) + " |" for r in data]
    return "\n".join(lines)


def summary_html(rows: list[dict]) -> str:
    data = summary_rows(rows)
    if not data:
        return ""
    head = "".join(f"<th>{escape(c.header)}</th>" for c in COLUMNS)
    body = []
    for r in data:
        cls = "win" if (r["gain_t"] or 0) > SIGNIFICANCE_SE else "loss" if (r["gain_t"] or 0) < -SIGNIFICANCE_SE else ""
        cells = "".join(f'<td{"" if c.kind == "text" else " class=num"}>{escape(display_value(r, c))}</td>'
                        for c in COLUMNS)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return (f'<div class="table-wrap"><table class="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table></div><p>{escape(NOTE)}</p>")
