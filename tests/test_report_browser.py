"""The smoke study's HTML report, opened in a real (headless) Chromium: it renders, and it decides."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(page: Path, profile: Path, *options: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "make test installs Debian's chromium; it is not on the PATH"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",  # let plotly draw before the DOM is read
        *options,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def rendered(smoke_run, tmp_path_factory) -> tuple[str, Path]:
    """The report's DOM after the browser ran its scripts, and the report folder."""
    _, root = smoke_run
    report = root / "reports" / "smoke"
    dom = _chromium(report / "index.html", tmp_path_factory.mktemp("profile"), "--dump-dom").stdout
    return dom, report


def _plots(dom: str) -> list[str]:
    return dom.split('<div class="plot">')[1:]


def test_the_page_renders_without_javascript_errors(rendered):
    dom, _ = rendered
    box = re.search(r'<div id="js-errors"([^>]*)>(.*?)</div>', dom, re.S)
    assert box is not None and "hidden" in box.group(1) and box.group(2).strip() == ""


def test_every_plot_is_drawn_with_its_points(rendered):
    dom, _ = rendered
    plots = _plots(dom)
    assert len(plots) >= 4
    for plot in plots:
        assert 'class="main-svg"' in plot and plot.count('class="point"') >= 1


def test_the_decision_section_names_a_trial_on_the_front(rendered):
    dom, report = rendered
    decision = re.search(r'<section class="decision" id="decision">(.*?)</section>', dom, re.S).group(1)
    front = set(pd.read_csv(report / "pareto.csv")["trial"])
    named = {int(n) for n in re.findall(r"--trial (\d+)", decision)}
    assert named and named <= front


def test_a_screenshot_of_the_report_is_saved(smoke_run, tmp_path):
    _, root = smoke_run
    shot = tmp_path / "report.png"
    _chromium(
        root / "reports" / "smoke" / "index.html",
        tmp_path / "profile",
        "--window-size=1400,3000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
