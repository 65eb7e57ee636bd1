"""`spurge tile` on synthetic orthomosaics: pixel-exact windows, splits, resumability, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window
from shapely.geometry import Point, box

from spurge.cli import cli
from spurge.config import SpeciesConfig
from spurge.errors import RasterError, VectorError
from spurge.io.tiles import read_tile_manifest, tile_image_path
from spurge.synthetic import synthesize
from spurge.tiling import (
    load_sources,
    snap_point_window,
    source_scaling,
    tile_grid,
    tile_plots,
)
from tests.builders import tiny_config as make_tiny_config


@pytest.fixture(scope="module")
def config() -> SpeciesConfig:
    return make_tiny_config()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory, config: SpeciesConfig):
    return synthesize(tmp_path_factory.mktemp("synth"), config, sites=3, size_px=256, seed=3)


def read_png(tiles_dir: Path, rel: str) -> np.ndarray:
    with Image.open(tile_image_path(tiles_dir, rel)) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def direct_read(ortho: Path, row: dict, out: int | None = None) -> np.ndarray:
    window = Window(row["col_off"], row["row_off"], row["width"], row["height"])
    with rasterio.open(ortho) as src:
        if out is None:
            data = src.read([1, 2, 3], window=window)
        else:
            data = src.read(
                [1, 2, 3], window=window, out_shape=(3, out, out), resampling=Resampling.bilinear
            )
    return data.transpose(1, 2, 0)


def expected_quarters(x: float, y: float, half_m: float) -> list:
    """The plot square around (x, y) cut in 2 x 2, in reading order."""
    left, top = x - half_m, y + half_m
    return [
        box(left + c * half_m, top - (r + 1) * half_m, left + (c + 1) * half_m, top - r * half_m)
        for r in (0, 1)
        for c in (0, 1)
    ]


def test_plot_tiles_are_pixel_exact_quarters(tmp_path, synth, config) -> None:
    result = tile_plots(synth.orthos, synth.plots, config, tmp_path / "tiles", progress=False)
    tiles = read_tile_manifest(tmp_path / "tiles")
    plots = gpd.read_file(synth.plots)
    assert len(tiles) == 4 * len(plots) == result.tiles == result.written
    assert tiles.crs == plots.crs
    for _, plot in plots.iterrows():
        mine = tiles[tiles["plot_id"] == plot["plot_id"]].sort_values("tile_id")
        assert list(mine["tile_id"]) == [f"{plot['plot_id']}_q{k}" for k in range(4)]
        assert set(mine["label"]) == {plot["label"]}
        assert set(mine["site"]) == {plot["site"]}
        assert mine["split"].nunique() == 1  # quarters never straddle splits
        squares = expected_quarters(plot.geometry.x, plot.geometry.y, config.plot_size_m / 2)
        for (_, row), square in zip(mine.iterrows(), squares, strict=True):
            assert row.geometry.equals_exact(square, tolerance=1e-6)
            assert (row["height"], row["width"]) == (32, 32)
            assert row["gsd_m"] == pytest.approx(0.05)
            ortho = Path(row["source"])
            assert ortho.name == f"{plot['site']}.tif"
            np.testing.assert_array_equal(
                read_png(tmp_path / "tiles", row["path"]), direct_read(ortho, row)
            )
    # One whole site is the test split; val holds whole plots of the other sites.
    test_sites = set(tiles.loc[tiles["split"] == "test", "site"])
    assert len(test_sites) == 1
    assert not set(tiles.loc[tiles["split"] != "test", "site"]) & test_sites
    # Val: per class, floor(n * 0.2 + 0.5) of the n non-test plots (never the last one).
    per_plot = tiles.groupby("plot_id")[["label", "split"]].first()
    rest = per_plot[per_plot["split"] != "test"]
    for label, group in rest.groupby("label"):
        n = len(group)
        assert int((group["split"] == "val").sum()) == min(n - 1, int(n * 0.2 + 0.5)), label
    assert set(per_plot["split"]) == {"train", "val", "test"}
    # sources.json records checksum and scaling for `spurge map`.
    sources = load_sources(tmp_path / "tiles")
    assert set(sources) == {str(p.resolve()) for p in synth.orthos}
    assert source_scaling(tmp_path / "tiles", synth.orthos[0]).is_identity
    assert "108 tile(s)" in result.summary()


def test_rerun_writes_nothing_and_interrupted_run_resumes(tmp_path, synth, config) -> None:
    out = tmp_path / "tiles"
    tile_plots(synth.orthos, synth.plots, config, out, progress=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = tile_plots(synth.orthos, synth.plots, config, out, progress=False)
    assert again.written == 0 and not again.manifest_written
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    # Simulate a killed run: manifest and some tiles missing, a temporary left behind.
    (out / "tiles.parquet").unlink()
    victims = files[:3]
    for p in victims:
        if p.suffix == ".png":
            p.unlink()
    stale = out / "images" / "site_000" / ".spurge-tmp-abc-site_000_p1_q0.png"
    stale.write_bytes(b"half")
    resumed = tile_plots(synth.orthos, synth.plots, config, out, progress=False)
    assert resumed.written == sum(p.suffix == ".png" for p in victims)
    assert not stale.exists()
    assert (out / "tiles.parquet").is_file()


def test_off_grid_points_snap_to_the_ortho_grid(tmp_path, synth, config) -> None:
    plots = gpd.read_file(synth.plots)
    # Move centres by a fraction of a pixel: 0.3 px right and 0.7 px down.
    plots["geometry"] = [Point(p.x + 0.3 * 0.05, p.y - 0.7 * 0.05) for p in plots.geometry]
    labels = tmp_path / "plots.geojson"
    plots.to_file(labels)
    tile_plots(synth.orthos, labels, config, tmp_path / "tiles", progress=False)
    tiles = read_tile_manifest(tmp_path / "tiles")
    original = gpd.read_file(synth.plots)
    for _, plot in original.iterrows():
        # 0.3 px rounds back to the corner; 0.7 px rounds to the next row down.
        squares = expected_quarters(plot.geometry.x, plot.geometry.y - 0.05, 1.6)
        mine = tiles[tiles["plot_id"] == plot["plot_id"]].sort_values("tile_id")
        for (_, row), square in zip(mine.iterrows(), squares, strict=True):
            assert row.geometry.equals_exact(square, tolerance=1e-6)
            np.testing.assert_array_equal(
                read_png(tmp_path / "tiles", row["path"]), direct_read(Path(row["source"]), row)
            )


def test_snap_rules() -> None:
    transform = rasterio.transform.from_origin(1000.0, 2000.0, 0.1, 0.1)
    # Centre 12.26 px right, 7.5 px down; 1 m plot = 10 px (even): block starting at 7.26 -> 7.
    window = snap_point_window(1001.226, 1999.25, transform, (0.1, 0.1), 1.0, even=True)
    assert (window.col_off, window.row_off, window.width, window.height) == (7, 3, 10, 10)
    odd = snap_point_window(1001.226, 1999.25, transform, (0.1, 0.1), 0.9, even=False)
    assert (odd.col_off, odd.width) == (8, 9)


def test_polygon_plots_equal_point_plots(tmp_path, synth, config) -> None:
    plots = gpd.read_file(synth.plots)
    plots["geometry"] = plots.geometry.buffer(1.6, cap_style="square")
    labels = tmp_path / "outlines.gpkg"
    plots.to_file(labels)
    tile_plots(synth.orthos, labels, config, tmp_path / "poly", progress=False)
    tile_plots(synth.orthos, synth.plots, config, tmp_path / "point", progress=False)
    poly, point = read_tile_manifest(tmp_path / "poly"), read_tile_manifest(tmp_path / "point")
    cols = ["tile_id", "row_off", "col_off", "height", "width", "split"]
    assert poly[cols].equals(point[cols])
    assert poly.geometry.geom_equals_exact(point.geometry, tolerance=1e-6).all()


def test_other_gsd_is_resampled(tmp_path) -> None:
    # Orthomosaic at 2.5 cm, config at 5 cm: each quarter is 64 ortho px read into 32 px.
    fine = make_tiny_config(tile_size_px=64, gsd_m=0.025)
    data = synthesize(tmp_path / "fine", fine, sites=1, size_px=512, seed=1)
    config = make_tiny_config()
    result = tile_plots(data.orthos, data.plots, config, tmp_path / "tiles", progress=False)
    assert "Resampled" in result.summary()
    tiles = read_tile_manifest(tmp_path / "tiles")
    assert set(tiles["width"]) == set(tiles["height"]) == {64}
    assert tiles["gsd_m"].to_numpy() == pytest.approx(0.05)
    plots = gpd.read_file(data.plots)
    for _, plot in plots.iterrows():
        mine = tiles[tiles["plot_id"] == plot["plot_id"]].sort_values("tile_id")
        squares = expected_quarters(plot.geometry.x, plot.geometry.y, 1.6)
        for (_, row), square in zip(mine.iterrows(), squares, strict=True):
            assert row.geometry.equals_exact(square, tolerance=1e-6)
            png = read_png(tmp_path / "tiles", row["path"])
            assert png.shape == (32, 32, 3)
            np.testing.assert_array_equal(png, direct_read(data.orthos[0], row, out=32))


def test_labels_in_another_crs_are_reprojected(tmp_path, synth, config) -> None:
    plots = gpd.read_file(synth.plots).to_crs("EPSG:4326")
    labels = tmp_path / "wgs84.geojson"
    plots.to_file(labels)
    result = tile_plots(synth.orthos, labels, config, tmp_path / "b", progress=False)
    assert "reprojected from EPSG:4326 to EPSG:32612" in result.summary()
    tile_plots(synth.orthos, synth.plots, config, tmp_path / "a", progress=False)
    a, b = read_tile_manifest(tmp_path / "a"), read_tile_manifest(tmp_path / "b")
    assert a[["tile_id", "row_off", "col_off"]].equals(b[["tile_id", "row_off", "col_off"]])


def test_single_site_uses_spatial_blocks(tmp_path, synth, config) -> None:
    result = tile_plots(synth.orthos[:1], synth.plots, config, tmp_path / "t", progress=False)
    tiles = read_tile_manifest(tmp_path / "t")
    # Plots of the two other sites lie outside this orthomosaic: skipped and reported.
    assert len(result.outside) == 18 and "Skipped 18 plot(s)" in result.summary()
    assert set(tiles["site"]) == {"site_000"}
    per_plot = tiles.groupby("plot_id")["split"].nunique()
    # 9 plots in round(1 / 0.25) = 4 strips along the longer axis: 3, 2, 2, 2 plots (rank *
    # 4 // 9); one strip is test, val takes floor(n * 0.2 + 0.5) of each class's rest.
    n_test = tiles[tiles["split"] == "test"]["plot_id"].nunique()
    assert n_test in (2, 3) and set(tiles["split"]) == {"train", "val", "test"}
    assert (per_plot == 1).all()
    # The test block is a contiguous strip: its plots' x (or y) range excludes other plots.
    centres = tiles.dissolve("plot_id", aggfunc="first").geometry.centroid
    split = tiles.groupby("plot_id")["split"].first()
    is_test = (split == "test").to_numpy()
    for coord in (centres.x.to_numpy(), centres.y.to_numpy()):
        lo, hi = coord[is_test].min(), coord[is_test].max()
        if not ((coord[~is_test] > lo) & (coord[~is_test] < hi)).any():
            break
    else:
        pytest.fail("test plots are not one spatial block")


def test_grid_tiles(tmp_path, synth, config) -> None:
    result = tile_grid(synth.orthos[:2], config, tmp_path / "grid", progress=False)
    tiles = read_tile_manifest(tmp_path / "grid")
    assert len(tiles) == result.tiles == 2 * (256 // 32) ** 2
    assert set(tiles["split"]) == {"unlabelled"} and tiles["label"].isna().all()
    assert tiles["plot_id"].isna().all()
    one = tiles[tiles["site"] == "site_001"]
    assert one.geometry.union_all().area == pytest.approx((256 * 0.05) ** 2)
    row = one.iloc[5].to_dict()
    np.testing.assert_array_equal(
        read_png(tmp_path / "grid", row["path"]), direct_read(Path(row["source"]), row)
    )


def test_nodata_tiles_are_skipped_and_reported(tmp_path, synth, config) -> None:
    # Copy site 0 with nodata=0 and blank out the top-left plot region.
    plots = gpd.read_file(synth.plots)
    with rasterio.open(synth.orthos[0]) as src:
        data, profile = src.read(), src.profile
        first = plots[plots["site"] == "site_000"].iloc[0]
        col, row = ~src.transform @ (first.geometry.x, first.geometry.y)
    data[:, : int(row), : int(col)] = 0  # covers quarter q0 of that plot
    ortho = tmp_path / "site_000.tif"
    with rasterio.open(ortho, "w", **{**profile, "nodata": 0}) as dst:
        dst.write(data)
    result = tile_plots([ortho], synth.plots, config, tmp_path / "t", progress=False)
    assert f"{first['plot_id']}_q0" in result.nodata_skipped
    assert "mostly nodata" in result.summary()
    tiles = read_tile_manifest(tmp_path / "t")
    assert f"{first['plot_id']}_q0" not in set(tiles["tile_id"])
    assert f"{first['plot_id']}_q3" in set(tiles["tile_id"])


def test_bad_inputs_raise_one_line_errors(tmp_path, synth, config) -> None:
    out = tmp_path / "out"
    far = gpd.read_file(synth.plots)
    far["geometry"] = far.geometry.translate(50_000, 0)
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(VectorError, match="none of the 27 plot"):
        tile_plots(synth.orthos, tmp_path / "far.gpkg", config, out, progress=False)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 definitely not a tiff")
    with pytest.raises(RasterError, match="cannot read as a raster"):
        tile_plots([corrupt], synth.plots, config, out, progress=False)
    with rasterio.open(synth.orthos[0]) as src:
        profile, data = src.profile, src.read()
    profile.pop("crs")
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(RasterError, match="no CRS"):
        tile_grid([no_crs], config, out, progress=False)
    with pytest.raises(RasterError, match="band"):
        tile_grid(synth.orthos, make_tiny_config(bands=[1, 2, 4]), out, progress=False)
    assert not (out / "tiles.parquet").exists()
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing half-written


def test_cli_tile(tmp_path, synth) -> None:
    config_path = tmp_path / "tiny.yaml"
    # JSON is valid YAML.
    config_path.write_text(make_tiny_config().model_dump_json(), encoding="utf-8")
    runner = CliRunner()
    orthos = [str(p) for p in synth.orthos]
    args = [*orthos, "--labels", str(synth.plots), "--config", str(config_path)]
    ok = runner.invoke(
        cli, ["tile", *args, "--out", str(tmp_path / "t"), "--test-sites", "site_002"]
    )
    assert ok.exit_code == 0, ok.output
    assert "108 tile(s)" in ok.output
    tiles = read_tile_manifest(tmp_path / "t")
    assert set(tiles.loc[tiles["split"] == "test", "site"]) == {"site_002"}
    grid = runner.invoke(
        cli,
        ["tile", orthos[0], "--grid", "--config", str(config_path), "--out", str(tmp_path / "g")],
    )
    assert grid.exit_code == 0 and "64 tile(s)" in grid.output
    both = runner.invoke(cli, ["tile", *args, "--grid", "--out", str(tmp_path / "x")])
    assert both.exit_code != 0 and "not both" in both.output
    missing = runner.invoke(
        cli,
        [
            "tile",
            orthos[0],
            "--labels",
            str(tmp_path / "nope.gpkg"),
            "--config",
            str(config_path),
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: {tmp_path / 'nope.gpkg'}: file not found"
    assert os.listdir(tmp_path / "y") == []


def test_geographic_ortho(tmp_path, synth, config) -> None:
    """An orthomosaic in lon/lat: plot sizes in metres become degrees via the pixel size."""
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(synth.orthos[0]) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        profile = {
            **src.profile,
            "crs": "EPSG:4326",
            "transform": transform,
            "width": width,
            "height": height,
        }
        ortho = tmp_path / "site_000.tif"
        with rasterio.open(ortho, "w", **profile) as dst:
            for band in (1, 2, 3):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.nearest,
                )
    result = tile_plots([ortho], synth.plots, config, tmp_path / "t", progress=False)
    assert "reprojected from EPSG:32612 to EPSG:4326" in result.summary()
    tiles = read_tile_manifest(tmp_path / "t")
    site_plots = gpd.read_file(synth.plots).query("site == 'site_000'")
    assert tiles.crs.to_epsg() == 4326 and len(tiles) == 4 * len(site_plots) == 36
    # Window size from the true ground pixel size (geodesic, computed here): 2 x round(n / 2).
    from pyproj import Geod

    lat = (profile["transform"].f + profile["transform"].f + profile["transform"].e * height) / 2
    lon = profile["transform"].c
    geod = Geod(ellps="WGS84")
    px_x = geod.inv(lon, lat, lon + transform.a, lat)[2]
    px_y = geod.inv(lon, lat, lon, lat - transform.e)[2]
    half_x = math.floor(3.2 / px_x / 2 + 0.5)
    half_y = math.floor(3.2 / px_y / 2 + 0.5)
    assert set(tiles["width"]) == {half_x} and set(tiles["height"]) == {half_y}
    # Each quarter covers half a plot (1.6 m) within half a ground pixel per side...
    assert abs(half_x * px_x - 1.6) <= px_x / 2 and abs(half_y * px_y - 1.6) <= px_y / 2
    # ...and its footprint (rotated by the grid convergence in UTM) has exactly that area.
    areas = tiles.to_crs("EPSG:32612").geometry.area
    np.testing.assert_allclose(areas, half_x * px_x * half_y * px_y, rtol=2e-3)
    for row in tiles.itertuples():
        assert read_png(tmp_path / "t", row.path).shape == (32, 32, 3)


def test_cog_and_vrt_orthos_give_the_same_tiles(tmp_path, synth, config) -> None:
    """A Cloud-Optimized GeoTIFF and a GDAL VRT of the same orthos cut the same pixels."""
    from rio_cogeo.cogeo import cog_translate, cog_validate
    from rio_cogeo.profiles import cog_profiles

    # Small internal tiles so a 256 px site still gets overviews, as a real COG would.
    profile = {**cog_profiles.get("deflate"), "blockxsize": 64, "blockysize": 64}

    (tmp_path / "cog").mkdir()
    (tmp_path / "vrt").mkdir()
    cogs, vrts = [], []
    for ortho in synth.orthos:
        cog = tmp_path / "cog" / ortho.name
        cog_translate(ortho, cog, profile, overview_level=2, quiet=True)
        vrt = tmp_path / "vrt" / f"{ortho.stem}.vrt"
        rasterio.shutil.copy(ortho, vrt, driver="VRT")
        cogs.append(cog)
        vrts.append(vrt)
    assert cog_validate(cogs[0])[0]
    with rasterio.open(cogs[0]) as src:
        assert src.overviews(1) == [2, 4]
    with rasterio.open(vrts[0]) as src:
        assert src.driver == "VRT"

    window_columns = ["tile_id", "label", "split", "row_off", "col_off", "height", "width"]
    runs = {}
    for name, orthos in {"tif": synth.orthos, "cog": cogs, "vrt": vrts}.items():
        tile_plots(orthos, synth.plots, config, tmp_path / f"tiles_{name}", progress=False)
        runs[name] = read_tile_manifest(tmp_path / f"tiles_{name}").sort_values("tile_id")
    reference = runs["tif"]
    for name in ("cog", "vrt"):
        tiles = runs[name]
        assert len(tiles) == len(reference) == 108
        assert tiles[window_columns].to_numpy().tolist() == (
            reference[window_columns].to_numpy().tolist()
        )
        assert list(tiles.geometry.geom_equals_exact(reference.geometry, 1e-9)) == [True] * len(
            tiles
        )
        assert all(str(p).endswith(".vrt" if name == "vrt" else ".tif") for p in tiles["source"])
        for ours, theirs in zip(tiles["path"], reference["path"], strict=True):
            assert np.array_equal(
                read_png(tmp_path / f"tiles_{name}", ours),
                read_png(tmp_path / "tiles_tif", theirs),
            )


def test_train_and_augment_refuse_a_config_with_other_tile_geometry(tmp_path, synth, config):
    """`tile --config A` then `train`/`augment --config B`: B's tile size must not reach the
    model card (and so the map's window size); the mismatch is refused, naming sources.json.
    """
    from spurge.augment.textual_inversion import labelled_train_tiles
    from spurge.errors import ManifestError
    from spurge.train import load_labelled_tiles

    out = tmp_path / "tiles"
    tile_plots(synth.orthos, synth.plots, config, out, progress=False)
    other = config.model_copy(update={"tile_size_px": 2 * config.tile_size_px})
    for reader in (load_labelled_tiles, labelled_train_tiles):
        with pytest.raises(
            ManifestError, match=r"sources\.json: .*tile_size_px 32 \(tiles\) vs 64"
        ):
            reader(out, other)
        reader(out, config)  # the config the tiles were cut with is accepted
    tiles = read_tile_manifest(out)
    assert len(load_labelled_tiles(out, config)) == len(tiles) == 108
    train = tiles[tiles["split"] == "train"]
    assert sorted(labelled_train_tiles(out, config)["tile_id"]) == sorted(train["tile_id"])
