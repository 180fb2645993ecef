"""The dataset card and the Data Docs open in headless Chromium (Debian's package), plots painted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when run as root)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(args: list[str], profile: Path) -> str:
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)
    return proc.stdout


@pytest.fixture(scope="module")
def outputs(kuaisar_project):
    return kuaisar_project / "outputs" / "kuaisar"


def colored_share(png: Path) -> float:
    """Share of saturated pixels: plots (bars, heatmaps, curves) are colored, text and tables are not
    (a text-only rendering of the card measures 0.0, with its plots about 0.05)."""
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    return float(((img.max(axis=-1) - img.min(axis=-1)) > 0.25).mean())


def ink_share(png: Path) -> float:
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    return float((img.min(axis=-1) < 0.85).mean())


def test_dataset_card_renders_with_its_plots(outputs, tmp_path):
    page = outputs / "card" / "dataset_card.html"
    dom = chromium(["--dump-dom", page.as_uri()], tmp_path / "p1")
    assert "Dataset card: kuaisar" in dom and dom.count("<img") >= 5
    shot = tmp_path / "card.png"
    chromium(["--window-size=1200,2600", f"--screenshot={shot}", page.as_uri()], tmp_path / "p2")
    assert shot.is_file() and colored_share(shot) > 0.02  # bars, heatmaps and curves painted


def test_data_docs_render(outputs, tmp_path):
    docs = outputs / "quality" / "data_docs" / "canonical_events"
    index = chromium(["--dump-dom", (docs / "index.html").as_uri()], tmp_path / "p3")
    assert "canonical_events" in index
    [validation] = list((docs / "validations").rglob("*.html"))
    dom = chromium(["--dump-dom", validation.as_uri()], tmp_path / "p4")
    assert "Expectation Validation Result" in dom and "Succeeded" in dom and "behaviors" in dom
    shot = tmp_path / "docs.png"
    chromium(["--window-size=1200,1400", f"--screenshot={shot}", validation.as_uri()], tmp_path / "p5")
    assert shot.is_file() and 0.01 < ink_share(shot) < 0.9  # a rendered page, not blank
