"""Progress output: a bar only where it redraws in place (terminal, notebook), whole lines in a log file."""

from __future__ import annotations

import io
import sys

from kdlab.console import display
from kdlab.engine.progress import LineProgress, SilentProgress, clock, epoch_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_display_follows_stderr(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert display() == "lines"
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert display() == "terminal"


def test_lines_in_a_log_file(monkeypatch):
    """stderr to a file: no bar, the quarters of a long epoch as lines (never at its end: the epoch line follows)."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    lines: list[str] = []
    assert isinstance(epoch_progress(range(3), 3, "epoch 1/2", True, lines.append), LineProgress)
    progress = LineProgress(range(100), 100, "epoch 1/2", lines.append, long_epoch_s=0.0)
    for i in progress:
        progress.set_postfix(loss=f"{1 / (i + 1):.3f}")
    assert [line.split("  ")[1] for line in lines] == ["25% (25/100 batches)", "50% (50/100 batches)",
                                                      "75% (75/100 batches)"]
    assert lines[0].startswith("epoch 1/2  25% (25/100 batches)  loss=0.040  epoch ETA 0:00")
    lines.clear()
    assert list(LineProgress(range(100), 100, "e", lines.append)) == list(range(100)) and not lines  # a short epoch


def test_bar_on_a_terminal_is_rate_limited(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Tty())
    bar = epoch_progress(range(3), 3, "epoch 1/2", True, print)
    assert bar.mininterval == 0.5 and list(bar) == [0, 1, 2]
    assert isinstance(epoch_progress(range(3), 3, "e", False, print), SilentProgress)


def test_clock():
    assert [clock(s) for s in (0, 41.4, 725, 10931)] == ["0:00", "0:41", "12:05", "3:02:11"]
