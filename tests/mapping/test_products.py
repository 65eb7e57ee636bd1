"""The field products of `spurge map`, checked against numbers computed here and files read
back with GDAL/OGR: exact uncertainty and survey ranking, GPX waypoints, units, provenance,
ground areas, GeoPackage version and styles, the page's legend and the ortho size rule.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from PIL import Image
from pyproj import Geod
from scipy.stats import entropy
from shapely.geometry import box

from spurge.mapping import map_orthos
from spurge.mapping import page as map_page
from spurge.mapping import products as map_products
from spurge.mapping.page import OrthoSource, legend_html, ortho_preview
from spurge.mapping.provenance import Provenance, created_now
from spurge.mapping.styles import overlay_lut, ramp_stops
from spurge.mapping.vectors import ground_areas_m2
from spurge.synthetic import synthesize
from tests.builders import make_colour_model as make_model
from tests.builders import tiny_config as make_tiny_config

SIZE_PX = 256
#: tests/conftest.py pins SOURCE_DATE_EPOCH to this instant (2026-01-01T00:00:00Z).
PINNED_CREATED = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory):
    """A map of a synthetic site, with the blended class sums the run merged (spied)."""
    work = tmp_path_factory.mktemp("products")
    site = synthesize(work / "synth", make_tiny_config(), sites=1, size_px=SIZE_PX, seed=3)
    run_dir = make_model(work / "run")
    seen: dict[str, np.ndarray] = {}
    real = map_products.blend_outputs

    def spy(sums, weights, positive, threshold):
        seen["sums"], seen["weights"] = sums.copy(), weights.copy()
        return real(sums, weights, positive, threshold)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(map_products, "blend_outputs", spy)
        result = map_orthos([site.orthos[0]], run_dir, work / "maps", progress=False)
    return {
        "result": result,
        "out": work / "maps",
        "name": site.orthos[0].stem,
        "ortho": site.orthos[0],
        "run": run_dir,
        **seen,
    }


def exact_probabilities(m: dict) -> np.ndarray:
    """(classes, rows, cols) blended class probabilities; NaN where no window counted."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m["weights"] > 0, m["sums"] / m["weights"], np.nan)


def test_uncertainty_raster_is_the_entropy_of_the_blended_classes(mapped):
    probs = exact_probabilities(mapped)
    valid = mapped["weights"] > 0
    # scipy's entropy, base = number of classes, so 1 = uniform (100 %).
    expected = entropy(np.where(valid, probs, 0.5), base=probs.shape[0], axis=0) * 100
    with rasterio.open(mapped["out"] / f"{mapped['name']}_uncertainty.tif") as src:
        written = src.read(1)
        assert src.units == ("%",) and "entropy" in src.descriptions[0]
    assert np.array_equal(written[valid], np.rint(expected[valid]).astype(np.uint8))
    assert (written[~valid] == 255).all()
    assert len(np.unique(written[valid])) > 10, "a constant raster would prove nothing"


def test_survey_points_rank_on_exact_uncertainty_with_spacing(mapped):
    probs = exact_probabilities(mapped)
    exact = entropy(np.nan_to_num(probs, nan=0.5), base=probs.shape[0], axis=0) * 100
    exact[mapped["weights"] == 0] = -1
    points = gpd.read_file(mapped["out"] / f"{mapped['name']}.gpkg", layer="survey_next")
    with rasterio.open(mapped["out"] / f"{mapped['name']}_prob.tif") as src:
        rows, cols = rasterio.transform.rowcol(src.transform, points.geometry.x, points.geometry.y)
    rows, cols = np.asarray(rows), np.asarray(cols)
    at_points = exact[rows, cols]
    assert list(points["rank"]) == list(range(1, 11))
    assert list(points["name"]) == [f"spurge-{i:02d}" for i in range(1, 11)]
    # Rank 1 is the most uncertain cell of the whole map; ranks follow exact uncertainty.
    assert at_points[0] == exact.max()
    assert (np.diff(at_points) <= 0).all()
    assert points["uncertainty_pct"].to_numpy() == pytest.approx(at_points, abs=0.006)
    p_present = probs[1][rows, cols] * 100
    assert points["prob_pct"].to_numpy() == pytest.approx(p_present, abs=0.006)
    # At least a window (2 cells at the default half-window stride) between any two points.
    spacing = (
        np.maximum(np.abs(rows[:, None] - rows[None]), np.abs(cols[:, None] - cols[None]))
        + np.eye(len(rows), dtype=int) * 99
    )
    assert spacing.min() >= 2
    # Each point is the best cell not within a window of a better-ranked one.
    for k in range(len(rows)):
        free = np.ones_like(exact, dtype=bool)
        for r, c in zip(rows[:k], cols[:k], strict=True):
            free[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] = False
        assert at_points[k] == exact[free].max()


def test_gpx_waypoints_read_back_with_gdal(mapped):
    gpx = mapped["out"] / f"{mapped['name']}_survey.gpx"
    assert "waypoints" in [name for name, _ in pyogrio.list_layers(gpx)]
    waypoints = pyogrio.read_dataframe(gpx, layer="waypoints")
    points = gpd.read_file(mapped["out"] / f"{mapped['name']}.gpkg", layer="survey_next")
    wgs84 = points.to_crs("EPSG:4326")
    assert list(waypoints["name"]) == list(points["name"])
    assert waypoints.geometry.x.to_numpy() == pytest.approx(wgs84.geometry.x, abs=1e-8)
    assert waypoints.geometry.y.to_numpy() == pytest.approx(wgs84.geometry.y, abs=1e-8)
    for row, point in zip(waypoints.itertuples(), points.itertuples(), strict=True):
        assert row.desc.startswith(f"rank {point.rank} of 10: P(present) {point.prob_pct:.2f} %")
        assert "Record:" in row.cmt and "leafy spurge" in row.cmt
    # Distinct places, not ten identical points.
    assert (
        len(
            {
                (round(x, 7), round(y, 7))
                for x, y in zip(wgs84.geometry.x, wgs84.geometry.y, strict=True)
            }
        )
        == 10
    )


def test_units_are_percent_everywhere_the_user_sees_them(mapped):
    out, name = mapped["out"], mapped["name"]
    with rasterio.open(out / f"{name}_prob.tif") as src:
        assert src.units == ("%",) and src.descriptions == ("probability of present (%)",)
        assert src.tags()["spurge_threshold_pct"] == "50"
        assert "spurge_threshold" not in src.tags()
    for layer in ["presence", "survey_next"]:
        frame = gpd.read_file(out / f"{name}.gpkg", layer=layer)
        share_columns = [c for c in frame.columns if "prob" in c or "uncert" in c]
        assert share_columns and all(c.endswith("_pct") for c in share_columns)
        assert all(frame[c].between(0, 100).all() for c in share_columns)
    polygons = gpd.read_file(out / f"{name}.gpkg", layer="presence")
    assert polygons["mean_prob_pct"].max() > 50  # percent, not a 0-1 share


def test_provenance_is_in_tags_geopackage_and_record(mapped):
    out, name, ortho = mapped["out"], mapped["name"], mapped["ortho"]
    expected = {
        "species": "leafy spurge",
        "positive_class": "present",
        "weights_sha256": hashlib.sha256(
            (mapped["run"] / "model.safetensors").read_bytes()
        ).hexdigest(),
        "created": PINNED_CREATED,
        "ortho_name": ortho.name,
        "ortho_sha256": hashlib.sha256(ortho.read_bytes()).hexdigest(),
        "crs": "EPSG:32612",
    }
    from spurge import __version__

    expected["spurge_version"] = __version__
    for kind in ["prob", "presence", "uncertainty"]:
        with rasterio.open(out / f"{name}_{kind}.tif") as src:
            tags = src.tags()
        assert {k: tags[f"spurge_{k}"] for k in expected} == expected, kind
    for layer in ["presence", "survey_next"]:
        meta = pyogrio.read_info(out / f"{name}.gpkg", layer=layer)["layer_metadata"]
        assert {k: meta[f"spurge_{k}"] for k in expected} == expected, layer
    assert not list(out.glob("*.aux.xml")), "reading the outputs must not write sidecars"
    record = json.loads((out / f"{name}.map.json").read_text())
    assert record["provenance"] == expected and record["crs"] == "EPSG:32612"
    # Paths relative to the map folder: the folder can move.
    assert (out / record["ortho"]).resolve() == ortho.resolve()
    assert not os.path.isabs(record["ortho"])
    for output in record["outputs"].values():
        assert "/" not in output["path"] and (out / output["path"]).is_file()
    survey = json.loads((out / f"{name}_survey.geojson").read_text())
    assert "leafy spurge" in survey["description"] and ortho.name in survey["description"]


def test_created_follows_the_clock_unless_pinned(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert created_now() == "1970-01-01T00:00:00Z"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert created_now() != "1970-01-01T00:00:00Z" and created_now().startswith("20")


def test_geopackage_is_version_1_2_with_default_styles(mapped):
    gpkg = mapped["out"] / f"{mapped['name']}.gpkg"
    with sqlite3.connect(gpkg) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # 'GPKG'
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
        styles = db.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
        geometry = dict(db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
    db.close()
    assert {s[0] for s in styles} == {"presence", "survey_next"}
    for table, column, default, qml in styles:
        assert column == geometry[table] and default == 1 and "<renderer-v2" in qml
    ogrinfo = Path("/usr/bin/ogrinfo")
    if ogrinfo.is_file():  # the system GDAL (3.6 on Debian 12) warns about 1.4 files
        done = subprocess.run(
            [str(ogrinfo), "-so", "-al", str(gpkg)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


def test_area_is_ground_area_whatever_the_projection():
    """A 100 m x 100 m UTM square drawn in Web Mercator at 46.7 N still reports 10 000 m²."""
    square = gpd.GeoDataFrame(geometry=[box(500_000, 5_172_000, 500_100, 5_172_100)], crs=32612)
    geod = Geod(ellps="WGS84")
    for crs in ["EPSG:32612", "EPSG:3857", "EPSG:4326"]:
        drawn = square.to_crs(crs)
        truth = abs(geod.geometry_area_perimeter(square.to_crs(4326).geometry[0])[0])
        assert ground_areas_m2(drawn)[0] == pytest.approx(truth, rel=1e-4), crs
    assert square.to_crs(3857).area[0] > 2 * 10_000  # what a planar 3857 area would say


def test_legend_uses_the_overlays_colours_and_transparency():
    legend = legend_html(50, Provenance("leafy spurge", "present", "0", "", "", "a.tif", "", ""))
    lut = overlay_lut()
    for value, (r, g, b, a) in ramp_stops():
        assert f"rgba({r}, {g}, {b}, {a / 255:.3f}) {value}%" in legend
        assert tuple(lut[value]) == (r, g, b, a)
    assert lut[0, 3] == 0 and lut[5, 3] < lut[10, 3] < lut[50, 3] < lut[100, 3]


def test_overlay_png_is_the_ramp_with_its_transparency():
    """The overlay's palette PNG decodes to exactly overlay_lut()'s RGBA, value for value
    (0-100 % and 255 = nodata), one cell per value.
    """
    from affine import Affine
    from rasterio.crs import CRS

    from spurge.mapping.page import overlay_png

    values = np.append(np.arange(101, dtype=np.uint8), [255, 255, 255]).reshape(8, 13)
    png, _ = overlay_png(values, Affine(2.0, 0, 500_000, 0, -2.0, 5_172_000), CRS.from_epsg(32612))
    image = Image.open(io.BytesIO(png))
    assert image.mode == "P"
    rgba = np.asarray(image.convert("RGBA"))
    lut = overlay_lut()
    # Cell centres (8 px per cell; the warp to Web Mercator keeps them within a cell).
    for (r, c), v in np.ndenumerate(values):
        y, x = round((r + 0.5) * rgba.shape[0] / 8), round((c + 0.5) * rgba.shape[1] / 13)
        assert tuple(rgba[y, x]) == tuple(lut[v]) or (lut[v, 3] == 0 and rgba[y, x, 3] == 0)


def test_page_inlines_locate_and_tells_what_to_record(mapped):
    page = (mapped["out"] / f"{mapped['name']}.html").read_text()
    assert "L.control.locate" in page and "spurge-01" in page
    assert "Record: is leafy spurge present" in page and "lat, lon" in page
    assert "data:image/webp;base64," in page


def test_large_ortho_is_shown_shrunk_to_the_size_rule(tmp_path, monkeypatch):
    """An ortho over the pixel budget is read decimated (never at full size) and noted."""
    big = tmp_path / "big.tif"
    profile = dict(
        driver="GTiff",
        width=6000,
        height=4000,
        count=3,
        dtype="uint8",
        crs="EPSG:32612",
        transform=rasterio.Affine(0.05, 0, 300_000, 0, -0.05, 5_180_000),
        tiled=True,
        SPARSE_OK=True,
    )
    with rasterio.open(big, "w", **profile) as dst:
        dst.write(
            np.full((3, 256, 256), 120, dtype=np.uint8),
            window=rasterio.windows.Window(0, 0, 256, 256),
        )
    source = OrthoSource(
        big, {"bands": [1, 2, 3], "low": [0] * 3, "high": [255] * 3, "dtype": "uint8"}
    )
    reads = []
    real_read = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        reads.append(kwargs.get("out_shape"))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    webp, _, info = ortho_preview(source, max_pixels=600_000)
    assert reads and all(shape is not None and shape[-1] * shape[-2] <= 600_000 for shape in reads)
    assert info.ortho_shrink == pytest.approx(np.sqrt(24e6 / 600_000))
    assert info.notes and "shrunk 6.3x" in info.notes[0] and "big.tif" in info.notes[0]
    assert len(webp) < 2_000_000


def test_summary_says_when_the_page_shows_a_shrunk_ortho(mapped, tmp_path, monkeypatch):
    monkeypatch.setattr(map_page, "ORTHO_MAX_PIXELS", 10_000)
    result = map_orthos([mapped["ortho"]], mapped["run"], tmp_path, progress=False)
    assert "shrunk 2.6x" in result.summary()
    assert json.loads((tmp_path / f"{mapped['name']}.map.json").read_text())["notes"]
    assert "shrunk" not in mapped["result"].summary()


def test_map_of_a_web_mercator_ortho_reports_ground_area(mapped, tmp_path):
    """Issue: an ortho warped to EPSG:3857 at 46.7 N reported area_m2 2.13x too large."""
    from rasterio.warp import calculate_default_transform, reproject

    mercator = tmp_path / "mercator.tif"
    with rasterio.open(mapped["ortho"]) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": "EPSG:3857", "transform": transform}
        profile.update(width=width, height=height)
        with rasterio.open(mercator, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band))
    map_orthos([mercator], mapped["run"], tmp_path / "maps", gsd_policy="resample", progress=False)
    polygons = gpd.read_file(tmp_path / "maps" / "mercator.gpkg", layer="presence")
    assert len(polygons) and polygons.crs.to_epsg() == 3857
    geod = Geod(ellps="WGS84")
    truth = [abs(geod.geometry_area_perimeter(g)[0]) for g in polygons.to_crs(4326).geometry]
    assert polygons["area_m2"].to_numpy() == pytest.approx(truth, rel=1e-4, abs=1e-3)
    assert polygons.area.sum() > 2 * polygons["area_m2"].sum()  # the planar figure
