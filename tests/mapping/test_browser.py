"""The `spurge map` web page, rendered by a real browser (headless Chromium), offline.

String checks on the HTML (test_map.py) cannot tell whether Leaflet actually runs and draws
the probability overlay; a screenshot can. Chromium is not installed here: the test is
skipped where ``/usr/bin/chromium`` is missing (``.ci/run`` installs Debian's package).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from spurge.cli import cli
from spurge.mapping.writers import probability_palette
from spurge.synthetic import synthesize
from tests.builders import make_colour_model as make_model
from tests.builders import tiny_config as make_tiny_config

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (800, 600)
#: Leaflet's map background (``.leaflet-container { background: #ddd }``): offline, no
#: basemap tile loads, so the semi-transparent overlay is composited over this grey.
LEAFLET_GREY = np.array([221, 221, 221])
#: Per-channel slack for the browser's colour rounding when it composites the overlay.
TOLERANCE = 6
#: Outline colour of the presence polygons in the page (spurge/mapping/writers.py).
POLYGON_BLUE = np.array([0x00, 0x44, 0xFF])

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium"),
]


def overlay_colours() -> np.ndarray:
    """(101, 3): the colour each probability 0-100 % shows on screen over Leaflet's grey.

    Mirrors the overlay's alpha ramp in ``overlay_png`` (80 + 1.5 x value out of 255), so
    these are colours that no other element of the page (blue polygons, cyan points, white
    controls, the opaque legend gradient, grey background) draws.
    """
    palette = probability_palette()
    colours = []
    for value in range(101):
        alpha = (80 + 1.5 * value) / 255
        colours.append(alpha * np.array(palette[value][:3]) + (1 - alpha) * LEAFLET_GREY)
    return np.rint(np.array(colours))


def probability_shown(screenshot: Path) -> np.ndarray:
    """Per pixel, the probability (0-100) whose overlay colour it shows, or -1 for none."""
    rgb = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    # A screenshot holds a few thousand distinct colours: match those, not every pixel.
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    distance = np.abs(colours[:, None, :] - overlay_colours()[None]).max(axis=-1)
    value = np.where(distance.min(axis=-1) <= TOLERANCE, distance.argmin(axis=-1), -1)
    return value[index.reshape(-1)].reshape(rgb.shape[:2])


def render(page: Path, screenshot: Path, profile: Path) -> Path:
    """Screenshot a local page with headless Chromium, network off, its own profile folder."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # Let Leaflet's scripts and the inline overlay image finish before the shot.
        "--virtual-time-budget=5000",
        f"--screenshot={screenshot}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and screenshot.is_file(), done.stderr[-2000:]
    return screenshot


def without_overlay(page: Path, out: Path) -> Path:
    """The same page with only the probability overlay's ``addTo(map)`` call removed."""
    html, removed = re.subn(
        r"^\s*image_overlay_\w+\.addTo\(map_\w+\);\s*$", "", page.read_text(), flags=re.M
    )
    assert removed == 1, "the page no longer adds the overlay the way this test expects"
    out.write_text(html)
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `spurge map` page of a tiny synthetic site with planted spurge patches."""
    work = tmp_path_factory.mktemp("browser")
    site = synthesize(work / "synth", make_tiny_config(), sites=1, size_px=256, seed=3)
    run_dir = make_model(work / "run")
    maps = work / "maps"
    result = CliRunner().invoke(
        cli, ["map", str(site.orthos[0]), "--model", str(run_dir), "--out", str(maps)]
    )
    assert result.exit_code == 0, result.output
    return maps / f"{site.orthos[0].stem}.html"


def test_offline_page_draws_the_probability_overlay(page: Path, tmp_path: Path) -> None:
    shown = probability_shown(render(page, tmp_path / "map.png", tmp_path / "profile"))
    overlay = shown >= 0
    # The 16 x 16 cell grid fills a few hundred screen pixels a side at the fitted zoom.
    assert overlay.sum() > 10_000, f"only {overlay.sum()} overlay pixels drawn"
    rows, cols = np.nonzero(overlay)
    assert rows.min() > 0 and cols.min() > 0, "overlay should sit inside the map, not clipped"
    assert rows.max() < WINDOW[1] - 1 and cols.max() < WINDOW[0] - 1
    # The planted patches come out as the ramp's dark end, the open grassland as its pale end.
    pale = overlay & (shown <= 20)
    assert (shown >= 70).sum() > 100 and pale.sum() > 1_000


def test_same_page_without_the_overlay_has_none_of_its_colours(page: Path, tmp_path: Path) -> None:
    """Negative control: the colour check above can fail, and fails for the right reason."""
    control = without_overlay(page, tmp_path / "control.html")
    screenshot = render(control, tmp_path / "control.png", tmp_path / "profile")
    assert (probability_shown(screenshot) >= 0).sum() < 50
    # The page itself still rendered: the presence polygons' blue outlines are on screen.
    rgb = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    assert (np.abs(rgb - POLYGON_BLUE).max(axis=-1) <= TOLERANCE).sum() > 100
