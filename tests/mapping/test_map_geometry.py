"""Map geometry checked against numbers computed here (issue 17: 1 and 3).

- Non-square pixels (0.05 x 0.04 m) on a non-square ortho: the output transform exactly, and
  every survey point's attributes against the rasters under that point.
- A nodata hole that does not line up with the window grid: the skipped windows and the
  nodata cells of every raster against an independent count under the documented rules
  (a window is skipped when more than ``max_nodata_fraction`` of it is nodata; a cell is
  nodata unless a kept window covers its centre and holds one of its valid pixels).
"""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from spurge.mapping import map_orthos
from spurge.synthetic import synthesize
from tests.builders import TILE_PX, TINY_CONFIG
from tests.builders import make_colour_model as make_model

X0, Y0 = 500_000.0, 5_200_000.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """RGB of a synthetic site (with planted spurge), 320 x 320 px, no zero pixel."""
    out = tmp_path_factory.mktemp("synth")
    synth = synthesize(out, TINY_CONFIG, sites=1, size_px=320, seed=3)
    with rasterio.open(synth.orthos[0]) as src:
        data = src.read()
    return np.maximum(data, 1)  # 0 is the nodata value of the hole test


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("run"))


def _write(path, data, res_x, res_y, nodata=None):
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
        crs="EPSG:32612", transform=from_origin(X0, Y0, res_x, res_y), nodata=nodata,
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _sample(path, x, y) -> int:
    with rasterio.open(path) as src:
        return int(next(src.sample([(x, y)]))[0])


def test_non_square_pixels_give_the_exact_transform_and_consistent_points(site, run_dir, tmp_path):
    # 320 x 240 px of 0.05 x 0.04 m: windows of 1.6 m are 32 x 40 px, default strides 16 x 20.
    ortho = _write(tmp_path / "rect.tif", site[:, :240, :], 0.05, 0.04)
    result = map_orthos([ortho], run_dir, tmp_path / "out", progress=False, survey_points=12)
    grid = result.maps[0].grid
    assert (grid.window_w, grid.window_h, grid.stride_x, grid.stride_y) == (32, 40, 16, 20)
    expected = Affine(0.05 * 16, 0.0, X0, 0.0, -0.04 * 20, Y0)
    for kind in ("prob", "presence", "uncertainty"):
        with rasterio.open(tmp_path / "out" / f"rect_{kind}.tif") as dst:
            assert dst.transform == expected
            assert (dst.width, dst.height) == (320 // 16, 240 // 20)
    points = gpd.read_file(tmp_path / "out" / "rect.gpkg", layer="survey_next")
    assert len(points) == 12
    out = tmp_path / "out"
    for row in points.itertuples():
        x, y = row.geometry.x, row.geometry.y
        col, r = ~expected * (x, y)
        assert (col % 1, r % 1) == pytest.approx((0.5, 0.5))  # at a cell centre
        assert abs(_sample(out / "rect_prob.tif", x, y) - row.prob_pct) <= 0.5 + 1e-9
        assert abs(_sample(out / "rect_uncertainty.tif", x, y) - row.uncertainty_pct) <= 0.5 + 1e-9
        assert _sample(out / "rect_presence.tif", x, y) == int(row.prob_pct >= 50)
    # The same points in the WGS84 GeoJSON land on the same native coordinates.
    data = json.loads((out / "rect_survey.geojson").read_text())
    lonlat = [f for f in data["features"] if f["properties"]["class"] == "survey next"]
    back = gpd.GeoDataFrame.from_features(lonlat, crs="EPSG:4326").to_crs("EPSG:32612")
    np.testing.assert_allclose(
        np.c_[back.geometry.x, back.geometry.y],
        np.c_[points.geometry.x, points.geometry.y],
        atol=1e-6,
    )


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] + window == size else [*starts, size - window]


def test_nodata_hole_off_the_window_grid(site, run_dir, tmp_path):
    data = site.copy()
    data[:, 101:147, 57:99] = 0  # 46 x 42 px, on no window or cell boundary
    ortho = _write(tmp_path / "hole.tif", data, 0.05, 0.05, nodata=0)
    result = map_orthos([ortho], run_dir, tmp_path / "out", progress=False)
    valid = np.all(data != 0, axis=0)
    win, stride, limit = TILE_PX, TILE_PX // 2, TINY_CONFIG.max_nodata_fraction
    size = valid.shape[0]
    n_cells = math.ceil(size / stride)
    covered = np.zeros((n_cells, n_cells), dtype=bool)
    skipped = 0
    for y in _starts(size, win, stride):
        for x in _starts(size, win, stride):
            if 1 - valid[y : y + win, x : x + win].mean() > limit:
                skipped += 1
                continue
            for r in range(n_cells):
                for c in range(n_cells):
                    cy, cx = (r + 0.5) * stride, (c + 0.5) * stride
                    if not (y <= cy < y + win and x <= cx < x + win):
                        continue
                    rows = slice(max(y, r * stride), min(y + win, (r + 1) * stride))
                    cols = slice(max(x, c * stride), min(x + win, (c + 1) * stride))
                    covered[r, c] |= bool(valid[rows, cols].any())
    assert skipped > 0 and result.maps[0].skipped == skipped
    record = json.loads((tmp_path / "out" / "hole.map.json").read_text())
    assert record["skipped_windows"] == skipped
    assert record["windows"] == len(_starts(size, win, stride)) ** 2 - skipped
    hole_cells = ~covered
    assert hole_cells.sum() > 0 and hole_cells[7:9, 4:6].all()  # cells inside the hole
    for kind in ("prob", "presence", "uncertainty"):
        with rasterio.open(tmp_path / "out" / f"hole_{kind}.tif") as dst:
            raster = dst.read(1)
        np.testing.assert_array_equal(raster == 255, hole_cells, err_msg=kind)
