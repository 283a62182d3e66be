"""The report opened in headless Chromium shows its plots (a non-blank, coloured screenshot).

Skipped when Chromium is not installed (``apt-get install -y chromium``; CI installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from results_tree import fake_presets, make_results_tree  # noqa: F401  (fake_presets is a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


def screenshot(html: Path, out: Path, profile: Path) -> "object":
    import numpy as np
    from PIL import Image

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1280,2400", html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-500:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(int)  # (H, W, 3)


def saturated(pixels) -> int:
    """Pixels of strong colour: plot lines and bars. Text is grey/black; the verdict cells are pastel."""
    return int(((pixels.max(-1) - pixels.min(-1)) > 100).sum())


def test_report_html_shows_its_plots_in_chromium(tmp_path, fake_presets):
    from hamt.report import report

    out = report(make_results_tree(tmp_path / "tree"))
    html = Path(out["html"])
    # Control: the same page with the images' data removed must look blank where the plots are,
    # so the check below can fail.
    blank = tmp_path / "no-images.html"
    blank.write_text(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:,", html.read_text()))

    shot = screenshot(html, tmp_path / "report.png", tmp_path / "profile-a")
    control = screenshot(blank, tmp_path / "control.png", tmp_path / "profile-b")
    assert shot.shape == (2400, 1280, 3)
    assert shot.std() > 10  # not a blank page
    # The figures follow the summary and the ledger: the part below the first 800 px holds the first plots.
    region = shot[800:, :]
    assert saturated(region) > 20_000 and region.std() > 20
    assert saturated(control[800:, :]) < 2_000  # a broken-image icon at most
