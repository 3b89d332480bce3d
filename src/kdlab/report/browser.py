"""A picture of what a reader sees first: the report's first screen at 1,400 x 900, taken with headless Chromium.

Only the Chromium binary is needed (Debian's ``chromium`` package; ``make test`` installs it): no Python package, no
network (the page is a local file and every background service is switched off). Without Chromium the report is
written as before, without the screenshot, and says so in one log line.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

SCREEN = (1400, 900)  # a laptop's browser window: what the first screen must hold
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run")
SCREENSHOT_FILE = "first_screen.png"


def find_chromium() -> str | None:
    """The path of a Chromium binary on PATH (``/usr/bin/chromium`` on Debian), or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, out: Path, size: tuple[int, int] = SCREEN, timeout_s: float = 60.0) -> str | None:
    """Save the first ``size`` pixels of ``page`` (an HTML file) as a PNG at ``out``; None on success, else why not."""
    chromium = find_chromium()
    if chromium is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdlab-chromium-") as profile:  # no shared profile, no lock between runs
        cmd = [chromium, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--hide-scrollbars",
               f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", Path(page).resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{Path(chromium).name} failed: {type(exc).__name__}: {exc}"
    if not out.is_file():
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return f"{Path(chromium).name} wrote no screenshot ({tail[0]})"
    return None


def keep_first_screen(report_dir: Path, log: Callable[[str], None]) -> Path | None:
    """``report_dir/first_screen.png`` from ``report_dir/index.html``, or one log line saying why there is none."""
    out = Path(report_dir) / SCREENSHOT_FILE
    why = screenshot(Path(report_dir) / "index.html", out)
    if why is not None:
        log(f"no {SCREENSHOT_FILE} of the report: {why}")
        return None
    return out
