"""The report's figures, drawn on ``matplotlib.figure.Figure`` objects (Agg, no pyplot and its global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdlab.report.calibration import ReliabilityBins
from kdlab.report.stats import ALPHA, t_critical

DPI = 120
LAST_COLOR, SELECTED_COLOR = "#9bb7d4", "#1f4e79"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def accuracy_figure(rows: list[dict], path: Path) -> Path:
    """Horizontal bars per row: last-epoch and val-selected test top-1, error bars = std over seeds."""
    n = len(rows)
    fig = Figure(figsize=(8, 1.2 + 0.55 * n))
    ax = fig.add_subplot()
    y = np.arange(n)
    h = 0.38
    for offset, part, color, name in ((-h / 2, "last", LAST_COLOR, "last epoch"),
                                      (h / 2, "selected", SELECTED_COLOR, "val-selected epoch")):
        means = [r.get(f"test_top1_{part}_mean") or 0.0 for r in rows]
        stds = [r.get(f"test_top1_{part}_std") or 0.0 for r in rows]
        ax.barh(y + offset, means, h, color=color, label=name)
        spread = [i for i, r in enumerate(rows) if r.get(f"test_top1_{part}_std") is not None]  # none for one seed
        if spread:
            ax.errorbar([means[i] for i in spread], [y[i] + offset for i in spread], xerr=[stds[i] for i in spread],
                        fmt="none", ecolor="black", capsize=3, elinewidth=1)
        for yi, m, sd in zip(y + offset, means, stds):
            ax.text(m + sd, yi, f"  {m:.2f}", va="center", fontsize=8)  # right of the error bar, not on it
    ax.set_yticks(y, [f"{r['label']}  (n={r['n_seeds']})" for r in rows])
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlabel("test top-1 (%), mean ± std over seeds (no error bar: one seed)")
    top = max([(r.get("test_top1_selected_mean") or 0) + (r.get("test_top1_selected_std") or 0) for r in rows]
              + [(r.get("test_top1_last_mean") or 0) + (r.get("test_top1_last_std") or 0) for r in rows] + [1.0])
    ax.set_xlim(0, min(100.0, top * 1.12) if top <= 100 else top * 1.12)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)  # off the bars
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def gains_figure(rows: list[dict], path: Path) -> Path | None:
    """The main figure: each distilled student's paired gain over its baseline (points, last epoch), ± 1 standard
    error (black) and its 95% confidence interval (grey, t with n − 1 df: ± 12.7 SE with 2 seeds); bars with p < 0.05
    are dark. Each value is written past the end of its interval, never on it. None when no row has a gain."""
    rows = sorted((r for r in rows if r.get("role") == "student" and r.get("gain_top1_last_mean") is not None),
                  key=lambda r: -r["gain_top1_last_mean"])
    if not rows:
        return None
    fig = Figure(figsize=(8, 1.2 + 0.42 * len(rows)))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    means = np.array([r["gain_top1_last_mean"] for r in rows])
    ses = np.array([r.get("gain_top1_last_se") or 0.0 for r in rows])
    ns = [int(r.get("gain_n_seeds") or 0) for r in rows]
    cis = np.array([t_critical(n - 1) * se if n > 1 else 0.0 for n, se in zip(ns, ses)])
    clear = [(r.get("gain_top1_last_p") is not None and r["gain_top1_last_p"] < ALPHA) for r in rows]
    ax.barh(y, means, 0.6, color=[SELECTED_COLOR if c else LAST_COLOR for c in clear])
    ax.errorbar(means, y, xerr=cis, fmt="none", ecolor="#888888", elinewidth=1, capsize=2)
    ax.errorbar(means, y, xerr=ses, fmt="none", ecolor="#222222", elinewidth=2, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    lo, hi = float(min((means - cis).min(), 0.0)), float(max((means + cis).max(), 0.0))
    span = max(hi - lo, 0.2)
    gap = 0.02 * span
    for yi, m, ci in zip(y, means, cis):
        right = m >= 0
        ax.text(m + (ci + gap) * (1 if right else -1), float(yi), f"{m:+.2f}", va="center",
                ha="left" if right else "right", fontsize=9)
    room = 0.2 * span  # for the labels past the intervals' ends
    ax.set_xlim(lo - (room if (means < 0).any() else 0.05 * span), hi + (room if (means >= 0).any() else 0.05 * span))
    ax.set_yticks(y, [f"{r['label']}  (n={n or r['n_seeds']})" for r, n in zip(rows, ns)])
    ax.invert_yaxis()
    ax.set_xlabel("gain over the baseline, paired by seed (points of test top-1)\n"
                  "bar = mean, black = ± 1 standard error, grey = 95% confidence interval; dark: p < 0.05")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _mean_curve(histories: Sequence[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std over runs of ``key`` (epochs where at least one run has it)."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for row in history:
            if row.get(key) is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = np.array(sorted(by_epoch))
    values = [np.array(by_epoch[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def curves_figure(curves: list[tuple[str, list[list[dict]]]], path: Path) -> Path:
    """Train loss and validation top-1 vs epoch, one line per row (mean over seeds, band = ± std)."""
    fig = Figure(figsize=(12, 4.5))
    panels = (("train_loss", "train loss (total objective)"), ("val_top1", "validation top-1 (%)"))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        drawn = False
        for label, histories in curves:
            epochs, mean, std = _mean_curve(histories, key)
            if len(epochs) == 0:
                continue
            line, = ax.plot(epochs, mean, marker="o" if len(epochs) < 30 else None, ms=3, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


CONFUSION_MIN_FONT_PT = 8  # the smallest text: at DPI 120 shown 1:1, 10 pt on screen (1 px = 0.75 pt)


def confusion_figure(confusion: torch.Tensor, class_names: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalized confusion matrix (% of each true class), counts written in cells for few classes.

    Sized to be shown at its natural size: ~650 px wide up to 15 classes (two side by side on a 1,400 px page),
    ~1,300 px beyond (the page's width), so that no text is below 10 pt on screen."""
    counts = confusion.double().numpy()
    k = counts.shape[0]
    rates = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    width = 5.4 if k <= 15 else 10.8  # inches at DPI 120
    fig = Figure(figsize=(width, width * 0.86))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("% of true class", fontsize=9)
    bar.ax.tick_params(labelsize=9)
    names = list(class_names) if len(class_names) == k else [str(i) for i in range(k)]
    if k <= 40:
        tick = 9 if k <= 15 else CONFUSION_MIN_FONT_PT
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=tick)
        ax.set_yticks(range(k), names, fontsize=tick)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=CONFUSION_MIN_FONT_PT,
                            color="white" if rates[i, j] > 50 else "black")
    ax.set_xlabel("predicted class", fontsize=10)
    ax.set_ylabel("true class", fontsize=10)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def reliability_figure(panels: list[tuple[str, ReliabilityBins]], path: Path) -> Path:
    """Reliability diagrams: accuracy per confidence bin against the diagonal of perfect calibration."""
    n = max(len(panels), 1)
    fig = Figure(figsize=(4.2 * n, 4.4))
    for i, (label, bins) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        width = 1.0 / bins.bins
        lefts = np.arange(bins.bins) * width
        acc = [100.0 * a if a is not None else 0.0 for a in bins.accuracy()]
        conf = [100.0 * c if c is not None else np.nan for c in bins.mean_confidence()]
        ax.bar(100 * lefts, acc, 100 * width, align="edge", color=SELECTED_COLOR, edgecolor="white",
               label="accuracy")
        ax.plot(100 * (lefts + width / 2), conf, "o", color="#d62728", ms=3, label="mean confidence")
        ax.plot([0, 100], [0, 100], "--", color="grey", lw=1, label="perfect calibration")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("confidence (%)")
        if i == 0:
            ax.set_ylabel("accuracy (%)")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(f"{label}\nECE {bins.ece():.2f}%  (n={bins.total})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
