"""The `spurge map` page in a real browser (headless Chromium), with the network blocked.

String checks on the HTML (test_map.py) cannot tell whether Leaflet runs, where it draws the
overlays, or what a field crew sees; a browser can. Each check renders a copy of the page
with a probe script appended: it may hide some layers, and it records, from Leaflet itself,
the screen position of known points and the boxes of the controls. The screenshot's colours
at the centres of the COG's cells are then compared with the COG's values.

Skipped where ``/usr/bin/chromium`` is missing (``.ci/run`` installs Debian's package).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image
from pyproj import Transformer

from spurge.cli import cli
from spurge.mapping.styles import overlay_lut
from spurge.synthetic import synthesize
from tests.builders import make_colour_model as make_model
from tests.builders import tiny_config as make_tiny_config

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (800, 600)
PHONE = (390, 760)
#: Leaflet's map background (``.leaflet-container { background: #ddd }``).
LEAFLET_GREY = np.array([221, 221, 221])
#: Per-channel slack for the browser's rounding when it composites the overlay.
TOLERANCE = 4

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium"),
]

FIXED_MAP = (
    "<style>.folium-map { position: absolute !important; left: 0; top: 0;"
    " width: 780px !important; height: 440px !important; }</style>"
)
PROBE = """
<script>
(function () {
  var m = %(map)s, hide = %(hide)s, points = %(points)s;
  m.eachLayer(function (l) {
    var url = l._url || "";
    var image = l instanceof L.ImageOverlay;
    if ((image && hide.indexOf("prob") >= 0 && url.indexOf("data:image/png") === 0)
        || (image && hide.indexOf("ortho") >= 0 && url.indexOf("data:image/webp") === 0)
        || (l instanceof L.Path && hide.indexOf("vectors") >= 0)) { m.removeLayer(l); }
  });
  if (hide.indexOf("controls") >= 0) {
    document.querySelectorAll(".leaflet-control-container, #spurge-legend").forEach(
      function (e) { e.style.display = "none"; });
  }
  function box(selector) {
    var e = document.querySelector(selector);
    if (!e) { return null; }
    var r = e.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom];
  }
  var overlays = [];
  m.eachLayer(function (l) {
    if (l instanceof L.ImageOverlay) {
      var b = l.getBounds();
      overlays.push([l._url.slice(0, 15), b.getSouth(), b.getWest(), b.getNorth(), b.getEast()]);
    }
  });
  var scale = document.querySelector(".leaflet-control-scale");
  var info = {
    points: points.map(function (p) { var c = m.latLngToContainerPoint(p); return [c.x, c.y]; }),
    legend: box("#spurge-legend"), scale: box(".leaflet-control-scale"),
    scale_text: scale ? scale.innerText : "", locate: box(".leaflet-control-locate"),
    layers_expanded: !!document.querySelector(".leaflet-control-layers-expanded"),
    overlays: overlays, viewport: [window.innerWidth, window.innerHeight]
  };
  var pre = document.createElement("pre");
  pre.id = "spurge-probe"; pre.style.display = "none"; pre.textContent = JSON.stringify(info);
  document.body.appendChild(pre);
})();
</script>
"""


def chromium(url: str, profile: Path, window: tuple[int, int], *args: str) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        # Offline, as on a field laptop without signal: no name resolves.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def probed(
    page: Path,
    work: Path,
    points: list[tuple[float, float]],
    hide: tuple[str, ...] = (),
    window: tuple[int, int] = WINDOW,
) -> tuple[dict, np.ndarray]:
    """Render ``page`` with the probe: (what the probe recorded, screenshot RGB)."""
    text = page.read_text()
    map_var = re.search(r"var (map_[0-9a-f]+) = L\.map\(", text)
    assert map_var, "the page no longer creates its map the way this test expects"
    copy = work / f"probe_{'_'.join(hide) or 'all'}_{window[0]}.html"
    if window == WINDOW:
        # Chromium's --dump-dom and --screenshot runs lay the page out in viewports of
        # different heights: pin the map's size so both see the same view.
        text = text.replace("</head>", f"{FIXED_MAP}</head>", 1)
    copy.write_text(
        text
        + PROBE
        % {"map": map_var.group(1), "hide": json.dumps(list(hide)), "points": json.dumps(points)}
    )
    dom = chromium(copy.as_uri(), work / "profile", window, "--dump-dom")
    found = re.search(r'<pre id="spurge-probe"[^>]*>(.*?)</pre>', dom, flags=re.S)
    assert found, "the probe did not run: the page's scripts failed"
    shot = work / f"{copy.stem}.png"
    chromium(copy.as_uri(), work / "profile", window, f"--screenshot={shot}")
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    return json.loads(html.unescape(found.group(1))), rgb


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A real `spurge map` page of a tiny synthetic site with planted spurge patches:
    (page, probability COG, ortho).
    """
    work = tmp_path_factory.mktemp("browser")
    site = synthesize(work / "synth", make_tiny_config(), sites=1, size_px=256, seed=3)
    run_dir = make_model(work / "run")
    maps = work / "maps"
    result = CliRunner().invoke(
        cli, ["map", str(site.orthos[0]), "--model", str(run_dir), "--out", str(maps)]
    )
    assert result.exit_code == 0, result.output
    stem = site.orthos[0].stem
    return maps / f"{stem}.html", maps / f"{stem}_prob.tif", site.orthos[0]


def cell_centres(cog: Path) -> tuple[np.ndarray, list[tuple[float, float]], float]:
    """COG values, the lat/lon of every cell centre (row-major), and the cell size (m)."""
    with rasterio.open(cog) as src:
        values = src.read(1)
        rows, cols = np.mgrid[0 : src.height, 0 : src.width]
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        lons, lats = to_wgs84.transform(xs, ys)
        cell = abs(src.transform.a)
    return values, [(float(lat), float(lon)) for lat, lon in zip(lats, lons, strict=True)], cell


def pixel(rgb: np.ndarray, point: list[float]) -> np.ndarray:
    return rgb[int(point[1]), int(point[0])]


def test_probability_overlay_is_registered_with_the_cog(mapped, tmp_path):
    """At every cell centre the page shows that cell's own colour, composited over what lies
    below it (the ortho): a shifted, rescaled or resampled overlay shows a neighbour's.
    """
    page, cog, _ = mapped
    values, centres, _ = cell_centres(cog)
    info, with_overlay = probed(page, tmp_path, centres, hide=("vectors", "controls"))
    _, below = probed(page, tmp_path, centres, hide=("vectors", "controls", "prob"))
    lut = overlay_lut().astype(float)
    errors = []
    for value, point in zip(values.ravel(), info["points"], strict=True):
        colour, alpha = lut[value, :3], lut[value, 3] / 255
        expected = alpha * colour + (1 - alpha) * pixel(below, point)
        errors.append(np.abs(pixel(with_overlay, point) - expected).max())
    errors = np.array(errors)
    assert (errors <= TOLERANCE).all(), (
        f"{(errors > TOLERANCE).sum()} of {errors.size} cells show another colour "
        f"(worst {errors.max():.0f}) at {np.argwhere(errors.reshape(values.shape) > TOLERANCE)[:5]}"
    )
    # The test can fail: neighbouring cells differ enough that a one-cell shift would show.
    shifted = np.roll(values, 1, axis=1)
    differ = np.abs(lut[shifted, :3] - lut[values, :3]).max(axis=-1) > 3 * TOLERANCE
    assert differ.sum() > 50


def test_overlay_bounds_cover_the_cog_and_no_more_than_a_pixel_of_margin(mapped, tmp_path):
    page, cog, _ = mapped
    info, _ = probed(page, tmp_path, [], hide=("vectors",))
    prob = [o[1:] for o in info["overlays"] if o[0].startswith("data:image/png")]
    assert len(prob) == 1
    south, west, north, east = prob[0]
    with rasterio.open(cog) as src:
        corners = [
            src.transform * c
            for c in [(0, 0), (src.width, 0), (0, src.height), (src.width, src.height)]
        ]
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        lons, lats = to_wgs84.transform(*zip(*corners, strict=True))
        cell_deg = abs(src.transform.a) / 111_000
    # Every COG corner lies inside the overlay, and the overlay's box is the corners' box
    # grown by less than one cell (the warp rounds to whole overlay pixels).
    assert south <= min(lats) and north >= max(lats) and west <= min(lons) and east >= max(lons)
    assert min(lats) - south < cell_deg and north - max(lats) < cell_deg
    assert min(lons) - west < 2 * cell_deg and east - max(lons) < 2 * cell_deg


def test_orthomosaic_is_visible_offline(mapped, tmp_path):
    """With only the ortho layer shown, the page's colours are the ortho's (8-bit scaled)."""
    page, _, ortho = mapped
    with rasterio.open(ortho) as src:
        rgb = src.read([1, 2, 3]).astype(float)
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        # A 12 x 12 grid of 9 x 9 px patches inside the ortho, and 4 points just outside it.
        centres = [(r, c) for r in range(16, 250, 20) for c in range(16, 250, 20)]
        xy = [src.transform * (c + 0.5, r + 0.5) for r, c in centres]
        outside = [
            src.transform * (c, r) for r, c in [(-10, 128), (266, 128), (128, -10), (128, 266)]
        ]
        lons, lats = to_wgs84.transform(*zip(*(xy + outside), strict=True))
    points = [(lat, lon) for lat, lon in zip(lats, lons, strict=True)]
    info, shot = probed(page, tmp_path, points, hide=("vectors", "prob", "controls"))
    screen = np.array(info["points"])
    px_per_ortho_px = np.hypot(*(screen[1] - screen[0])) / 20
    assert 0.5 < px_per_ortho_px < 4, "the page should open zoomed to the site"
    diffs = []
    for (r, c), (x, y) in zip(centres, screen[: len(centres)], strict=True):
        half = int(4 / px_per_ortho_px)
        truth = rgb[:, r - half : r + half + 1, c - half : c + half + 1].mean(axis=(1, 2))
        seen = shot[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5].reshape(-1, 3).mean(axis=0)
        diffs.append(np.abs(seen - truth).max())
    assert np.median(diffs) < 8 and np.max(diffs) < 25, (np.median(diffs), np.max(diffs))
    for x, y in screen[len(centres) :]:
        assert np.abs(shot[int(y), int(x)] - LEAFLET_GREY).max() <= 2, "outside the ortho"
    # Control: the ortho is not the grey the page shows without it.
    truths = np.array([rgb[:, r, c] for r, c in centres])
    assert np.abs(truths - LEAFLET_GREY).max(axis=1).mean() > 40


def test_controls_fit_a_laptop_and_a_phone(mapped, tmp_path):
    page, _, _ = mapped
    info, _ = probed(page, tmp_path, [])
    left, top, right, bottom = info["scale"]
    legend = info["legend"]
    assert left >= 0 and right <= WINDOW[0] and top >= 0 and bottom <= WINDOW[1]
    overlap = not (
        right <= legend[0] or legend[2] <= left or bottom <= legend[1] or legend[3] <= top
    )
    assert not overlap, f"scale bar {info['scale']} under the legend {legend}"
    assert info["scale_text"].strip().endswith("m") and "ft" not in info["scale_text"]
    assert info["locate"] is not None, "the locate-me control (inlined plug-in) is missing"
    assert info["layers_expanded"], "on a laptop the layer list starts open"
    phone, _ = probed(page, tmp_path, [], window=PHONE)
    assert phone["viewport"][0] <= 700
    assert not phone["layers_expanded"], "on a phone the layer list starts collapsed"
