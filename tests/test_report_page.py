"""The report as people read it: the verdict sentence, the p-values, the notebook view, the live page and its
server, and (with Chromium) the first screen at 1,400 x 900 in a real browser."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

from fixtures_report import make_tiny_experiment
from kdlab.report.browser import find_chromium
from kdlab.report.stats import format_p, incomplete_beta, paired_t_p, t_critical, t_two_sided_p
from kdlab.report.summary import summary_rows
from kdlab.report.verdict import verdict_html, verdict_text

CHROMIUM = find_chromium()
SCREEN = {"width": 1400, "height": 900}


# -- statistics -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t, df", [(12.706, 1), (2.776, 4), (2.262, 9), (-2.262, 9)])
def test_t_two_sided_p_at_the_tabulated_5_percent_points(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=1e-4)


def test_t_distribution_known_values():
    assert t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    assert t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-5)  # the normal limit
    assert incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248)  # Σ_{j=2..4} C(4,j) 0.4^j 0.6^(4−j)
    assert t_critical(1) == pytest.approx(12.7062, abs=1e-3) and t_critical(4) == pytest.approx(2.7764, abs=1e-3)


def test_paired_t_p_needs_two_seeds_and_a_spread():
    assert paired_t_p(1.0, None, 1) == (None, None) and paired_t_p(1.0, 0.0, 3) == (None, None)
    t, p = paired_t_p(-6.75, 0.25, 2)
    assert t == pytest.approx(-27.0) and p == pytest.approx(0.02357, abs=1e-4)
    assert format_p(p) == "p = 0.024" and format_p(0.0499) == "p = 0.0499" and format_p(1e-5) == "p < 0.001"


def _student(label, mean, se, n, flags=None):
    return {"role": "student", "label": label, "gain_top1_last_mean": mean, "gain_top1_last_se": se,
            "gain_n_seeds": n, "n_seeds": n, "flags": flags}


def test_two_seeds_are_never_called_clear_below_t_12_71():
    rows = summary_rows([_student("a", 2.0, 0.2, 2), _student("b", 2.0, 0.1, 2), _student("c", 2.0, 0.2, 5)])
    by = {r["label"]: r for r in rows}
    assert by["a"]["gain_t"] == pytest.approx(10) and by["a"]["significant"] is False  # t = 10 < 12.71
    assert by["a"]["verdict"] == "no clear difference; 2 seeds: weak evidence"
    assert by["b"]["significant"] is True and by["b"]["verdict"] == "better; 2 seeds: weak evidence"  # t = 20
    assert by["c"]["significant"] is True and by["c"]["verdict"] == "better"  # t = 10, 4 df


def test_verdict_sentence_names_gains_losses_and_flags():
    rows = [{"role": "baseline", "label": "s (baseline)", "flags": "collapsed to chance in 1/3 seed(s)"},
            _student("kd: t → s", 1.5, 0.3, 3), _student("at: t → s", -2.0, 0.2, 3),
            _student("fitnets: t → s", 0.1, 0.5, 3)]
    text = verdict_text(rows)
    assert text.startswith("With 3 seeds per method, better than the baseline: kd: t → s by 1.50 points (p = 0.038)")
    assert "worse than the baseline: at: t → s by 2.00 points (p = 0.010)" in text
    assert "no clear difference: fitnets: t → s +0.10 points (p = 0.86)" in text
    assert "flagged: s (baseline) (collapsed to chance in 1/3 seed(s))" in text and text.endswith(".")
    html = verdict_html(rows)
    assert html.count("<abbr title=") == 6 and "paired t-test" in html and "n − 1 degrees of freedom" in html
    assert "better than" not in verdict_text([_student("kd: t → s", 1.5, 0.3, 2)])  # t = 5, 1 df: not clear


# -- a real tiny experiment's report --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_experiment(tmp_path_factory.mktemp("page"))


def test_results_carry_p_values_and_the_verdict(tiny):
    results = json.loads((tiny / "report" / "results.json").read_text())
    students = [r for r in results["rows"] if r["role"] == "student"]
    for row in students:
        for part in ("last", "selected"):
            expected = paired_t_p(row[f"gain_top1_{part}_mean"], row[f"gain_top1_{part}_se"], row["gain_n_seeds"])[1]
            assert row[f"gain_top1_{part}_p"] == (pytest.approx(expected) if expected is not None else None)
    verdict = results["verdict"]
    assert verdict.startswith("With 2 seeds per method") and "2 seeds are weak evidence" in verdict
    assert {s["label"] for s in results["summary"]} == {r["label"] for r in students}
    md = (tiny / "report" / "results.md").read_text()
    assert md.index("With 2 seeds") < md.index("## Gains over the baseline") and "¹ Points:" in md
    html = (tiny / "report" / "index.html").read_text()
    assert html.count("Gains over the baseline</h2>") == 1 and html.index('id="verdict"') < html.index("gains-table")
    assert " pp" not in html and "(pp" not in html and "± SE" not in html


def test_notebook_view_has_separate_tables_and_full_width_figures(tiny):
    from kdlab.report.notebook import notebook_html

    html = notebook_html(tiny / "report")
    assert html.count("<table") == 2 and 'id="verdict"' in html
    images = html.count("<img ")
    assert images >= 5 and html.count('style="width:100%;height:auto"') == images
    assert html.count('src="data:image/png;base64,') == images


def test_live_page_and_server_for_a_partly_finished_experiment(tiny, tmp_path):
    from kdlab.report.live import run_status, serve, write_live
    from kdlab.expdir import Manifest

    exp = tmp_path / "exp"
    shutil.copytree(tiny, exp)
    manifest = json.loads((exp / "manifest.json").read_text())
    done = manifest["runs"][-1]
    running = {**done, "key": "kd-running", "seed": 7, "run_dir": "runs/kd-running"}
    waiting = {**done, "key": "kd-waiting", "seed": 8, "run_dir": "runs/kd-waiting"}
    manifest["runs"] += [running, waiting]
    (exp / "manifest.json").write_text(json.dumps(manifest))
    run_dir = exp / "runs" / "kd-running"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("epochs: 5\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_time_s": 2.0}) + "\n"
                                                   for e in (1, 2)))
    page = write_live(exp)
    assert page == exp / "report" / "live.html"
    url, server = serve(exp / "report", port=0)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "live.html", timeout=10) as response:
            assert response.status == 200
            html = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert '<meta http-equiv="refresh" content="10">' in html
    assert f"{len(manifest['runs']) - 2} done, 1 running, 1 waiting of {len(manifest['runs'])} runs" in html
    status = run_status(next(s for s in Manifest.read(exp).runs if s.key == "kd-running"))
    assert (status.state, status.epoch, status.epochs, status.eta_s) == ("running", 2, 5, 6.0)
    assert '<tr class="state-running"><td>kd-running</td>' in html and "<td class=num>2/5</td>" in html
    assert '<tr class="state-waiting"><td>kd-waiting</td>' in html and 'id="partial"' in html
    assert "kd: cnn_small → cnn_tiny" in html and "(baseline)" in html
    # every run over: no refresh, a link to the full report
    manifest["runs"] = manifest["runs"][:-2]
    (exp / "manifest.json").write_text(json.dumps(manifest))
    final = write_live(exp).read_text()
    assert "http-equiv" not in final and 'href="index.html"' in final


# -- the first screen in a real browser -----------------------------------------------------------------------------
def test_first_screen_in_chromium(tiny):
    """At 1,400 x 900: the verdict and the gains table are on the first screen, nothing overflows horizontally,
    every image loads, and the confusion matrices' smallest text is at least 10 pt as shown."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; `make test` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    from kdlab.report.browser import CHROMIUM_ARGS
    from kdlab.report.figures import CONFUSION_MIN_FONT_PT, DPI

    report = tiny / "report"
    assert (report / "first_screen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport=SCREEN)
            page.goto((report / "index.html").as_uri(), wait_until="load")
            boxes = {name: page.locator(sel).bounding_box() for name, sel in
                     (("verdict", "#verdict"), ("gains", "#gains-table"))}
            widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            images = page.evaluate("() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                                   "i.naturalWidth, i.getBoundingClientRect().width])")
        finally:
            browser.close()
    for name, box in boxes.items():
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= SCREEN["height"], (name, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= SCREEN["width"], (name, box)
    assert widths[0] == widths[1], widths
    assert images and all(complete and natural > 0 for _, complete, natural, _ in images), images
    for src, _, natural, shown in images:
        if src.startswith("confusion_"):
            shown_pt = CONFUSION_MIN_FONT_PT * DPI / 96 * (shown / natural)  # image px -> CSS px, 1 pt = 4/3 px
            assert shown_pt >= 10, (src, shown_pt)
