"""Bad-input matrix, tile side (issue 14): odd inputs to ``spurge tile``, its plots and configs.

Reuses the helpers of :mod:`tests.cli.test_bad_inputs`: every refused input is one
``error:`` line, exit 1, no traceback, inputs byte-identical and nothing under a final output
name; every accepted odd input gives exactly the tiles it should.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from pyproj import Geod, Transformer
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject
from shapely.affinity import rotate
from shapely.geometry import MultiPolygon, Point, box

from spurge.io.tiles import read_tile_manifest
from tests import builders
from tests.cli.test_bad_inputs import (
    CRS_UTM12N,
    GSD_M,
    N_PLOTS,
    ORIGIN_X,
    ORIGIN_Y,
    ORTHO_PX,
    PLOT_CENTRES_PX,
    _labels,
    _plot_frame,
    _texture,
    assert_nothing_written,
    assert_one_line_error,
    checksums,
    invoke,
    leftover_temporaries,
    write_ortho,
)
from tests.conftest import make_tiny_config

PLOT_M = 3.2  # the tiny config's plot_size_m: 2 x 2 quarters of 32 px at 5 cm


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """A folder with the tiny config, an RGB ortho in UTM 12N and 9 point plots over it."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(make_tiny_config().model_dump(mode="json")))
    write_ortho(root / "rgb.tif", _texture(0).astype(np.uint8))
    _plot_frame(_labels()).to_file(root / "plots.gpkg")
    return root


def tile(root: Path, out: Path, *args: str, ortho: Path | None = None, labels: Path | None = None):
    return invoke(
        "tile", str(ortho or root / "rgb.tif"), "--labels", str(labels or root / "plots.gpkg"),
        "--config", str(root / "config.yaml"), *args, "--out", str(out),
    )  # fmt: skip


def refused(root: Path, out: Path, problem: str, *args: str, **kwargs: Path) -> None:
    """The matrix's checks: one line naming ``problem``, inputs unchanged, nothing written."""
    before = checksums([root])
    result = tile(root, out, *args, **kwargs)
    assert_one_line_error(result, problem)
    assert_nothing_written(out)
    assert checksums([root]) == before


def plot_frame_with(geometries: list, crs: str = CRS_UTM12N) -> gpd.GeoDataFrame:
    n = len(geometries)
    return gpd.GeoDataFrame(
        {"label": _labels()[:n], "site": ["meadow"] * n, "plot_id": [f"p{i}" for i in range(n)]},
        geometry=geometries,
        crs=crs,
    )


def centre(i: int) -> Point:
    """Centre of the i-th plot of the 3 x 3 layout (reading order)."""
    r, c = PLOT_CENTRES_PX[i // 3], PLOT_CENTRES_PX[i % 3]
    return Point(ORIGIN_X + (c + 0.5) * GSD_M, ORIGIN_Y - (r + 0.5) * GSD_M)


# ---------------------------------------------------------------------------------------------
# 1. outputs onto inputs
# ---------------------------------------------------------------------------------------------


def test_plots_file_inside_out_named_like_an_output_is_refused(inputs: Path) -> None:
    out = inputs / "out"
    out.mkdir()
    labels = out / "sources.json"  # GeoJSON plots that sources.json would replace
    _plot_frame(_labels()).to_file(labels, driver="GeoJSON")
    before = checksums([inputs])
    result = tile(inputs, out, labels=labels)
    assert_one_line_error(result, "would overwrite the input")
    assert str(labels) in result.output
    assert checksums([inputs]) == before
    assert sorted(p.name for p in out.rglob("*")) == ["sources.json"]


def test_ortho_at_a_tile_path_is_refused(inputs: Path) -> None:
    out = inputs / "out"
    ortho = out / "images" / "meadow" / "meadow_p0_q0.png"  # a GeoTIFF under a tile's name
    ortho.parent.mkdir(parents=True)
    write_ortho(ortho, _texture(0).astype(np.uint8))
    before = checksums([inputs])
    result = tile(inputs, out, ortho=ortho)
    assert_one_line_error(result, "would overwrite the input")
    assert checksums([inputs]) == before
    assert [p for p in out.rglob("*") if p.is_file()] == [ortho]


# ---------------------------------------------------------------------------------------------
# 2. ground metres in scaled projections
# ---------------------------------------------------------------------------------------------


def _warped_ortho(root: Path, crs: str, utm_origin_y: float, name: str) -> Path:
    """A 5 cm UTM 12N ortho at northing ``utm_origin_y``, warped (nearest) to ``crs``."""
    utm = write_ortho(root / f"utm_{name}.tif", _texture(0).astype(np.uint8))
    with rasterio.open(utm, "r+") as dst:
        dst.transform = from_origin(ORIGIN_X, utm_origin_y, GSD_M, GSD_M)
    out = root / f"{name}.tif"
    with rasterio.open(utm) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": crs, "transform": transform}
        profile.update(width=width, height=height)
        with rasterio.open(out, "w", **profile) as dst:
            for band in (1, 2, 3):
                reproject(rasterio.band(src, band), rasterio.band(dst, band),
                          resampling=Resampling.nearest)  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("crs", "northing", "latitude"),
    [("EPSG:3857", 5_172_000.0, 46.7), ("EPSG:3395", 1_614_500.0, 14.6)],
    ids=["web-mercator-46.7N", "world-mercator-14.6N"],
)
def test_scaled_projections_are_cut_at_true_ground_size(
    inputs: Path, tmp_path: Path, crs: str, northing: float, latitude: float
) -> None:
    ortho = _warped_ortho(inputs, crs, northing, crs.replace(":", "_"))
    with rasterio.open(ortho) as src:
        _, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(
            (src.bounds.left + src.bounds.right) / 2, (src.bounds.top + src.bounds.bottom) / 2
        )
        # Independent ground size of one ortho pixel: geodesic length of one pixel step.
        to_ll = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        cx, cy = src.xy(src.height // 2, src.width // 2)
        x0, y0 = to_ll.transform(cx, cy)
        x1, _ = to_ll.transform(cx + src.transform.a, cy)
        ground_px = Geod(ellps="WGS84").inv(x0, y0, x1, y0)[2]
    assert lat == pytest.approx(latitude, abs=0.05)
    dy = (ORTHO_PX * GSD_M) / 2
    plots = plot_frame_with([Point(ORIGIN_X + 6.4, northing - dy)])
    plots.to_file(inputs / "one.gpkg")
    out = tmp_path / "out"
    result = tile(inputs, out, "--test-sites", "meadow", ortho=ortho, labels=inputs / "one.gpkg")
    assert result.exit_code == 0, result.output
    tiles = read_tile_manifest(out)
    assert len(tiles) == 4
    n = 2 * math.floor(PLOT_M / ground_px / 2 + 0.5)  # the snapping rule, from the true GSD
    assert set(tiles["width"]) == {n // 2}
    metres = tiles.to_crs(CRS_UTM12N).geometry.bounds
    for side in (metres["maxx"] - metres["minx"], metres["maxy"] - metres["miny"]):
        # Each quarter covers half the 3.2 m plot, within half a ground pixel.
        np.testing.assert_allclose(side, PLOT_M / 2, atol=ground_px / 2 + 1e-3)


# ---------------------------------------------------------------------------------------------
# 3. polygon plots that are not plot-sized squares
# ---------------------------------------------------------------------------------------------


def _square(c: Point, w: float, h: float):
    return box(c.x - w / 2, c.y - h / 2, c.x + w / 2, c.y + h / 2)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        (lambda c: _square(c, 6.4, 3.2), "outline is 6.4 x 3.2 m"),
        (lambda c: _square(c, 3.2, 2.4), "outline is 3.2 x 2.4 m"),
        (lambda c: _square(c, 0.1, 0.1), "outline is 0.1 x 0.1 m"),
        (lambda c: box(c.x, c.y, c.x, c.y + 3.2), "degenerate polygon (zero area)"),
        (
            lambda c: MultiPolygon([_square(c, 3.2, 3.2), _square(Point(c.x + 5, c.y), 1, 1)]),
            "detached parts",
        ),
    ],
    ids=["2-to-1", "3.2x2.4", "10-cm", "zero-area", "detached-part"],
)
def test_polygon_plots_off_size_are_refused(inputs: Path, shape, problem: str) -> None:
    geoms = [_square(centre(i), PLOT_M, PLOT_M) for i in range(N_PLOTS)]
    geoms[4] = shape(centre(4))
    plot_frame_with(geoms).to_file(inputs / "outlines.gpkg")
    refused(inputs, inputs / "out", problem, labels=inputs / "outlines.gpkg")
    assert "p4" in tile(inputs, inputs / "out2", labels=inputs / "outlines.gpkg").output


def test_polygons_within_tolerance_are_cut_as_plot_squares(inputs: Path, tmp_path: Path) -> None:
    """A rotated 3.5 x 2.9 m outline and a square with a 0.1 m sliver: a 3.2 m square around
    the centroid of the largest part, the same windows as point plots at those centroids.
    """
    geoms = [_square(centre(i), PLOT_M, PLOT_M) for i in range(N_PLOTS)]
    geoms[2] = rotate(_square(centre(2), 3.5, 2.9), 30, origin="centroid")
    sliver = _square(Point(centre(6).x + 2.5, centre(6).y), 0.1, 0.1)
    geoms[6] = MultiPolygon([geoms[6], sliver])
    plot_frame_with(geoms).to_file(inputs / "outlines.gpkg")
    centroids = [g.centroid for g in geoms]
    centroids[6] = geoms[6].geoms[0].centroid  # the largest part's, not the sliver-pulled one
    assert centroids[6].distance(geoms[6].centroid) > 1e-3
    plot_frame_with(centroids).to_file(inputs / "centroids.gpkg")
    polys = tile(inputs, tmp_path / "poly", labels=inputs / "outlines.gpkg")
    points = tile(inputs, tmp_path / "point", labels=inputs / "centroids.gpkg")
    assert polys.exit_code == 0 and points.exit_code == 0, polys.output
    cols = ["tile_id", "row_off", "col_off", "height", "width", "split"]
    a, b = read_tile_manifest(tmp_path / "poly"), read_tile_manifest(tmp_path / "point")
    assert a[cols].to_numpy().tolist() == b[cols].to_numpy().tolist()


def test_resampled_note_checks_both_axes(inputs: Path, tmp_path: Path) -> None:
    """5 cm x 4 cm pixels: the x windows are 32 px like the tiles, the y windows 40 px."""
    ortho = write_ortho(inputs / "rect.tif", _texture(0).astype(np.uint8))
    with rasterio.open(ortho, "r+") as dst:
        dst.transform = from_origin(ORIGIN_X, ORIGIN_Y, 0.05, 0.04)
    plot_frame_with([Point(ORIGIN_X + 6.4, ORIGIN_Y - 5.12)]).to_file(inputs / "one.gpkg")
    result = tile(inputs, tmp_path / "t", ortho=ortho, labels=inputs / "one.gpkg")
    assert result.exit_code == 0, result.output
    tiles = read_tile_manifest(tmp_path / "t")
    assert set(tiles["width"]) == {32} and set(tiles["height"]) == {40}
    assert "Resampled to the configured GSD for rect." in result.output


# ---------------------------------------------------------------------------------------------
# 4. files with several layers
# ---------------------------------------------------------------------------------------------


def test_several_layers_need_labels_layer(inputs: Path, tmp_path: Path) -> None:
    labels = inputs / "surveys.gpkg"
    old = _plot_frame(["absent"] * N_PLOTS)
    new = _plot_frame(_labels())
    old.to_file(labels, layer="survey_2019")
    new.to_file(labels, layer="survey_2024")
    refused(inputs, tmp_path / "a", "has 2 layers (survey_2019, survey_2024)", labels=labels)
    refused(inputs, tmp_path / "b", "has no layer 'survey'", "--labels-layer", "survey",
            labels=labels)  # fmt: skip
    result = tile(inputs, tmp_path / "c", "--labels-layer", "survey_2024", labels=labels)
    assert result.exit_code == 0, result.output
    assert "Plots read from layer 'survey_2024'." in result.output
    tiles = read_tile_manifest(tmp_path / "c")
    per_plot = tiles.groupby("plot_id")["label"].first()
    assert per_plot.to_dict() == dict(zip(new["plot_id"], new["label"], strict=True))


# ---------------------------------------------------------------------------------------------
# 5. black margins without a nodata tag
# ---------------------------------------------------------------------------------------------


def test_untagged_black_margin_tiles_are_skipped_with_a_warning(
    inputs: Path, tmp_path: Path
) -> None:
    data = (_texture(0) * 200).astype(np.uint16)
    data[:, :, :80] = 0  # 0-filled margin over the left column of plots, no nodata tag
    ortho = write_ortho(inputs / "margin.tif", data)
    result = tile(inputs, tmp_path / "t", ortho=ortho)
    assert result.exit_code == 0, result.output
    tiles = read_tile_manifest(tmp_path / "t")
    left = {"p0", "p3", "p6"}  # plot centres at column 40.5: windows span columns 9-73
    assert len(tiles) == 4 * (N_PLOTS - 3) and not set(tiles["plot_id"]) & left
    assert "Warning: skipped 12 tile(s) that are 0 in every band" in result.output
    assert "gdal_edit.py -a_nodata 0" in result.output
    # A tile that is 0 in only some pixels is kept: the rule is every pixel, every band.
    data[:, :, :41] = 0
    data[:, :, 41:80] = 7
    write_ortho(inputs / "margin.tif", data)
    result = tile(inputs, tmp_path / "u", ortho=ortho)
    assert "Warning: skipped 6 tile(s)" in result.output  # q0 and q2 of the three plots


def test_every_tile_black_without_nodata_is_a_one_line_error(inputs: Path) -> None:
    ortho = write_ortho(inputs / "black.tif", np.zeros((3, ORTHO_PX, ORTHO_PX), np.uint16))
    refused(inputs, inputs / "out", "0 in every band and the orthomosaic has no nodata value",
            ortho=ortho)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 6. manifest rows leaving their folder
# ---------------------------------------------------------------------------------------------


def _train(tiles: Path, out: Path, config: Path, *extra: str):
    return invoke("train", str(tiles), "--config", str(config), "--backbone", "random-small",
                  "--steps", "1", *extra, "--out", str(out))  # fmt: skip


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_tiles_parquet_rows_leaving_the_folder_are_refused(
    inputs: Path, tmp_path: Path, bad: str
) -> None:
    tiles = builders.make_site_tiles(tmp_path / "tiles")
    frame = gpd.read_parquet(tiles / "tiles.parquet")
    frame.loc[3, "path"] = bad
    frame.to_parquet(tiles / "tiles.parquet", index=False)
    before = checksums([tiles])
    result = _train(tiles, tmp_path / "out", inputs / "config.yaml")
    assert_one_line_error(result, f"row path {bad!r} leaves the manifest's folder")
    assert "tiles.parquet" in result.output
    assert_nothing_written(tmp_path / "out")
    assert checksums([tiles]) == before


@pytest.mark.parametrize("bad", ["../tiles/images/site_3_absent_0_q0.png", "/tmp/x.png"])
def test_synthetic_parquet_rows_leaving_the_folder_are_refused(
    inputs: Path, tmp_path: Path, bad: str
) -> None:
    tiles = builders.make_site_tiles(tmp_path / "tiles")
    store = builders.make_synthetic_store(tmp_path / "synthetic", tiles, per_tile=1)
    frame = pd.read_parquet(store / "synthetic.parquet")
    frame.loc[0, "path"] = bad  # e.g. a held-out test tile
    frame.to_parquet(store / "synthetic.parquet", index=False)
    before = checksums([tiles, store])
    result = _train(tiles, tmp_path / "out", inputs / "config.yaml", "--synthetic", str(store))
    assert_one_line_error(result, f"row path {bad!r} leaves the manifest's folder")
    assert "synthetic.parquet" in result.output
    assert_nothing_written(tmp_path / "out")
    assert checksums([tiles, store]) == before


# ---------------------------------------------------------------------------------------------
# 7. overlapping plots
# ---------------------------------------------------------------------------------------------


def test_two_overlap_groups_never_straddle_splits(inputs: Path, tmp_path: Path) -> None:
    """Pairs of plots 1 m apart (overlapping squares), pairs 5 m apart (disjoint)."""
    centres, ids = [], []
    for k in range(6):
        x = ORIGIN_X + 2 + (k % 3) * 4.2
        y = ORIGIN_Y - 2 - (k // 3) * 6
        centres += [Point(x, y), Point(x + 0.5, y - 1.0)]
        ids += [f"g{k}a", f"g{k}b"]
    plots = gpd.GeoDataFrame(
        {"label": ["present", "absent"] * 6, "site": "meadow", "plot_id": ids},
        geometry=centres,
        crs=CRS_UTM12N,
    )
    plots.to_file(inputs / "pairs.gpkg")
    splits_seen = set()
    for seed in range(6):
        out = tmp_path / f"s{seed}"
        result = tile(inputs, out, "--seed", str(seed), "--val-fraction", "0.5",
                      labels=inputs / "pairs.gpkg")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "Warning: 12 plot(s) overlap other plots (g0a/g0b" in result.output
        tiles = read_tile_manifest(out)
        per_plot = tiles.groupby("plot_id")["split"].first()
        for k in range(6):
            assert per_plot[f"g{k}a"] == per_plot[f"g{k}b"], (seed, k, per_plot.to_dict())
        splits_seen |= set(per_plot)
    assert splits_seen == {"train", "val", "test"}


# ---------------------------------------------------------------------------------------------
# 8. duplicate YAML keys
# ---------------------------------------------------------------------------------------------


def test_duplicate_yaml_key_is_refused_with_its_line(inputs: Path, tmp_path: Path) -> None:
    text = (inputs / "config.yaml").read_text()
    assert text.count("positive_class:") == 1
    (inputs / "config.yaml").write_text(text + "positive_class: absent\n")
    line = len(text.splitlines()) + 1
    first = 1 + next(i for i, t in enumerate(text.splitlines()) if t.startswith("positive_class"))
    refused(inputs, tmp_path / "out",
            f"duplicate key 'positive_class' at line {line} (first at line {first})")  # fmt: skip
    assert str(inputs / "config.yaml") in tile(inputs, tmp_path / "o").output


# ---------------------------------------------------------------------------------------------
# 9 and 17. coordinates, georeferencing and file formats that mislead
# ---------------------------------------------------------------------------------------------


def test_geojson_with_utm_numbers_and_no_crs(inputs: Path) -> None:
    frame = _plot_frame(_labels())
    features = [
        {"type": "Feature", "properties": {"label": lab, "site": "meadow", "plot_id": pid},
         "geometry": {"type": "Point", "coordinates": [g.x, g.y]}}
        for lab, pid, g in zip(frame["label"], frame["plot_id"], frame.geometry, strict=True)
    ]  # fmt: skip
    labels = inputs / "utm_numbers.geojson"
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    refused(inputs, inputs / "out", "coordinates look projected, not lon/lat", labels=labels)


def test_gcp_only_ortho(inputs: Path) -> None:
    ortho = inputs / "gcps.tif"
    with rasterio.open(ortho, "w", driver="GTiff", width=ORTHO_PX, height=ORTHO_PX, count=3,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(_texture(0).astype(np.uint8))
        dst.gcps = (
            [
                GroundControlPoint(0, 0, ORIGIN_X, ORIGIN_Y),
                GroundControlPoint(ORTHO_PX, 0, ORIGIN_X, ORIGIN_Y - 12.8),
                GroundControlPoint(0, ORTHO_PX, ORIGIN_X + 12.8, ORIGIN_Y),
            ],
            CRS_UTM12N,
        )
    refused(inputs, inputs / "out", "georeferenced by GCPs: warp it first (gdalwarp)",
            ortho=ortho)  # fmt: skip


def test_lonlat_tag_on_utm_numbers(inputs: Path) -> None:
    ortho = write_ortho(inputs / "mislabelled.tif", _texture(0).astype(np.uint8),
                        crs="EPSG:4326")  # fmt: skip
    refused(inputs, inputs / "out", "bounds impossible for lon/lat", ortho=ortho)
    # map reads orthos through the same check
    from spurge.errors import RasterError
    from spurge.io.raster import open_ortho

    with pytest.raises(RasterError, match="bounds impossible for lon/lat"), open_ortho(ortho):
        pass


def test_semicolon_csv_names_its_delimiter(inputs: Path) -> None:
    frame = _plot_frame(_labels())
    labels = inputs / "plots.csv"
    pd.DataFrame({"x": frame.geometry.x, "y": frame.geometry.y, "label": frame["label"]}).to_csv(
        labels, sep=";", index=False
    )
    refused(inputs, inputs / "out", "is semicolon-delimited (';')", "--labels-crs", CRS_UTM12N,
            labels=labels)  # fmt: skip


def test_geoparquet_plots_are_read(inputs: Path, tmp_path: Path) -> None:
    labels = inputs / "plots.parquet"
    _plot_frame(_labels()).to_parquet(labels)
    result = tile(inputs, tmp_path / "pq", labels=labels)
    assert result.exit_code == 0, result.output
    reference = tile(inputs, tmp_path / "gpkg")
    assert reference.exit_code == 0
    cols = ["tile_id", "label", "split", "row_off", "col_off"]
    a, b = read_tile_manifest(tmp_path / "pq"), read_tile_manifest(tmp_path / "gpkg")
    assert len(a) == 4 * N_PLOTS
    assert a[cols].to_numpy().tolist() == b[cols].to_numpy().tolist()


# ---------------------------------------------------------------------------------------------
# 14. verify --record with the manifest inside the data folder
# ---------------------------------------------------------------------------------------------


def test_verify_record_skips_its_own_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(b"\x00\x01")
    manifest = data / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"name": "x", "source": "here", "licence": "CC0"}))
    for _ in range(2):  # a second --record must find nothing new and still verify
        result = invoke("verify", str(manifest), "--record")
        assert result.exit_code == 0, result.output
        assert "2 file(s) verified" in result.output and "0 with a wrong checksum" in result.output
    listed = [f["path"] for f in yaml.safe_load(manifest.read_text())["files"]]
    assert listed == ["a.txt", "sub/b.bin"]
    assert invoke("verify", str(manifest)).exit_code == 0


# ---------------------------------------------------------------------------------------------
# 16. blank sites; 18. compound CRS in the summary
# ---------------------------------------------------------------------------------------------


def test_blank_site_values_count_as_missing(inputs: Path, tmp_path: Path) -> None:
    frame = _plot_frame(_labels())
    frame["site"] = ["", "  ", "meadow"] * 3
    frame.to_file(inputs / "blank.gpkg")
    result = tile(inputs, tmp_path / "t", labels=inputs / "blank.gpkg")
    assert result.exit_code == 0, result.output
    tiles = read_tile_manifest(tmp_path / "t")
    # Blank sites take the orthomosaic's name, as a file without a site column does.
    per_plot = tiles.groupby("plot_id")["site"].first().to_dict()
    assert per_plot == {f"p{i}": ("meadow" if i % 3 == 2 else "rgb") for i in range(N_PLOTS)}
    assert set(tiles.loc[tiles["site"] == "rgb", "path"].str.split("/").str[1]) == {"rgb"}


def test_compound_crs_summary_names_the_crs_not_wkt(inputs: Path, tmp_path: Path) -> None:
    ortho = write_ortho(inputs / "compound.tif", _texture(0).astype(np.uint8),
                        crs="EPSG:32612+5703")  # fmt: skip
    _plot_frame(_labels(), crs="EPSG:4326").to_file(inputs / "wgs84.gpkg")
    result = tile(inputs, tmp_path / "t", ortho=ortho, labels=inputs / "wgs84.gpkg")
    assert result.exit_code == 0, result.output
    assert "Labels reprojected from EPSG:4326 to EPSG:32612+5703." in result.output
    assert "PROJCRS" not in result.output and "COMPOUNDCRS" not in result.output
    assert len(read_tile_manifest(tmp_path / "t")) == 4 * N_PLOTS
    assert leftover_temporaries(tmp_path / "t") == []


def test_full_disk_while_writing_tiles_names_the_tile(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 item 11, tile side: ENOSPC mid-way through the tile PNGs is one line naming
    the PNG (not "unexpected OSError"), nothing is left under a final name or as a temporary,
    and the same command completes once there is space again.
    """
    import errno

    real = Path.write_bytes
    written = {"n": 0}

    def full_after_three(self: Path, data: bytes) -> int:
        if self.name.endswith(".png"):
            written["n"] += 1
            if written["n"] > 3:
                real(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    out = tmp_path / "tiles"
    before = checksums([inputs])
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full_after_three)
        result = tile(inputs, out)
    assert_one_line_error(result, "cannot write (No space left on device)")
    line = result.output.strip()
    assert line.endswith(".png: cannot write (No space left on device)"), line
    assert ".spurge-tmp-" not in line  # the name the user will look for, not a temporary
    assert leftover_temporaries(out) == []
    assert not (out / "tiles.parquet").exists()
    assert checksums([inputs]) == before
    again = tile(inputs, out)
    assert again.exit_code == 0, again.output
    assert (out / "tiles.parquet").is_file()
