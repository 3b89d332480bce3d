"""A training epoch's progress, shown in the way its output stream can carry.

On a terminal a tqdm bar redraws in place at most twice a second; in a Jupyter notebook at most once a second (every
redraw is a message to the browser, so a cell gets tens of updates per epoch, not a thousand). Anywhere else (stderr
redirected to a file, a pipe, CI, nohup) a bar's carriage-return frames would pile up in the log (a one-epoch run
left 467 of them, 46 KB), so progress is a few whole lines instead: one every quarter of an epoch when the epoch
lasts longer than :data:`LONG_EPOCH_S`, and the trainer's own line at each epoch end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from kdlab.console import display

REFRESH_S = {"terminal": 0.5, "notebook": 1.0}  # the least time between two redraws of a bar
LONG_EPOCH_S = 30.0  # an epoch expected to last longer than this gets lines within it (when lines are written)
LINE_EVERY = 0.25  # ... one each time this fraction of its batches is done


def epoch_progress(iterable: Iterable, total: int, desc: str, enabled: bool, log: Callable[[str], None],
                   start: int = 0) -> Any:
    """An iterable over ``iterable`` that shows progress where stderr can carry it (see the module's docstring);
    like a tqdm bar it has ``set_postfix(**values)``, whose latest values the bar or the lines show. ``start``: the
    batches of the epoch done before ``iterable``'s first (an epoch resumed from a mid-epoch checkpoint)."""
    if not enabled:
        return SilentProgress(iterable)
    kind = display()
    if kind in REFRESH_S:
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                    unit="batch", mininterval=REFRESH_S[kind], initial=start)
    return LineProgress(iterable, total, desc, log, start=start)


class SilentProgress:
    """No progress output (another rank than the main one, ``progress: false``, or workers of an experiment)."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, **values: Any) -> None:
        pass


class LineProgress:
    """Whole lines, for a log file: ``epoch 2/10  50% (120/240 batches)  loss=0.512  img_s=1830  epoch ETA 0:41``,
    written when an epoch that will last longer than :data:`LONG_EPOCH_S` passes each :data:`LINE_EVERY` mark (not at
    its end: the trainer's epoch line follows)."""

    def __init__(self, iterable: Iterable, total: int, desc: str, log: Callable[[str], None],
                 long_epoch_s: float = LONG_EPOCH_S, start: int = 0) -> None:
        self.iterable, self.total, self.desc, self.log = iterable, max(int(total), 1), desc, log
        self.long_epoch_s, self.start = long_epoch_s, start
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        next_mark = LINE_EVERY
        while next_mark <= self.start / self.total:  # marks a resumed epoch had passed
            next_mark += LINE_EVERY
        for done, item in enumerate(self.iterable, start=self.start + 1):
            yield item
            fraction = done / self.total
            if fraction < next_mark or fraction >= 1.0:
                continue
            while next_mark <= fraction:
                next_mark += LINE_EVERY
            elapsed = time.perf_counter() - start
            if elapsed * self.total / (done - self.start) > self.long_epoch_s:
                self.log(self._line(done, elapsed))

    def _line(self, done: int, elapsed: float) -> str:
        """The line after ``done`` batches, ``elapsed`` seconds after this process's first (of ``done - start``)."""
        values = "  ".join(f"{k}={v}" for k, v in self.postfix.items())
        left = elapsed * (self.total - done) / max(done - self.start, 1)
        return (f"{self.desc}  {100 * done // self.total}% ({done}/{self.total} batches)  {values}  "
                f"epoch ETA {clock(left)}").replace("    ", "  ")


def clock(seconds: float) -> str:
    """``0:41``, ``12:05``, ``3:02:11``: a duration as a reader of a log wants it."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
