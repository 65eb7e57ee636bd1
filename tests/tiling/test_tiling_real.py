"""`spurge tile` on the real rasters and vectors in ../shared/testdata.

Different CRSs, dtypes (uint8, float32), band counts (3, 4 with alpha, 5), nodata values,
non-square pixels and missing georeferencing. Set SPURGE_TESTDATA to point elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely.geometry import box

from spurge.config import SpeciesConfig
from spurge.errors import RasterError, VectorError
from spurge.io.tiles import read_tile_manifest, tile_image_path
from spurge.tiling import source_scaling, tile_grid, tile_plots


def make_config(**overrides: object) -> SpeciesConfig:
    values: dict[str, object] = {
        "species": "test",
        "classes": [
            {"name": "absent", "initializer": "grassland"},
            {"name": "present", "initializer": "flowers"},
        ],
        "positive_class": "present",
        "plot_size_m": 1.6,
        "tile_size_px": 16,
        "quarters": True,
        "gsd_m": 0.05,
        "site_column": None,
        "plot_id_column": None,
    }
    values.update(overrides)
    return SpeciesConfig.model_validate(values)


def expected_rgb(tiles_dir: Path, row: dict, size: int, alpha_band: int | None = None):
    """Direct rasterio read of the manifest window, scaled the way sources.json says."""
    scaling = source_scaling(tiles_dir, row["source"])
    window = Window(row["col_off"], row["row_off"], row["width"], row["height"])
    kwargs: dict = {"window": window}
    mask_kwargs: dict = {"window": window}
    if (row["height"], row["width"]) != (size, size):
        kwargs.update(out_shape=(3, size, size), resampling=Resampling.bilinear)
        mask_kwargs.update(out_shape=(3, size, size), resampling=Resampling.nearest)
    with rasterio.open(row["source"]) as src:
        data = src.read(list(scaling.bands), **kwargs)
        valid = np.all(src.read_masks(list(scaling.bands), **mask_kwargs) > 0, axis=0)
        if alpha_band:
            alpha_kwargs = {**mask_kwargs}
            alpha_kwargs.pop("out_shape", None)
            valid &= src.read(alpha_band, **alpha_kwargs) > 0
    rgb = scaling.apply(data)
    rgb[:, ~valid] = 0
    return rgb.transpose(1, 2, 0)


def png(tiles_dir: Path, rel: str) -> np.ndarray:
    with Image.open(tile_image_path(tiles_dir, rel)) as image:
        return np.asarray(image)


def test_float32_points_osbs(testdata, tmp_path) -> None:
    """Float32 RGB with a -3.4e38 nodata, stem points in UTM 17N, 0.1 m pixels."""
    taxa = ["QULA", "PIPA", "QUGE", "QUMA"]
    config = make_config(
        classes=[{"name": t, "initializer": "tree"} for t in taxa],
        positive_class="QULA",
        label_column="taxonID",
        plot_id_column="tag",
        plot_size_m=3.2,
        gsd_m=0.1,
    )
    ortho, labels = testdata / "OSBS_403000_3285000.tif", testdata / "OSBS.shp"
    out = tmp_path / "tiles"
    result = tile_plots([ortho], labels, config, out, progress=False)
    tiles = read_tile_manifest(out)
    plots = gpd.read_file(labels)
    with rasterio.open(ortho) as src:
        transform, width, height = src.transform, src.width, src.height
    inside = 0
    for _, plot in plots.iterrows():
        col, row = ~transform @ (plot.geometry.x, plot.geometry.y)
        col0, row0 = math.floor(col - 16 + 0.5), math.floor(row - 16 + 0.5)
        if col0 < 0 or row0 < 0 or col0 + 32 > width or row0 + 32 > height:
            assert plot["tag"] in result.outside
            continue
        inside += 1
        mine = tiles[tiles["plot_id"] == plot["tag"]].sort_values("tile_id")
        assert list(mine["col_off"]) == [col0, col0 + 16, col0, col0 + 16]
        assert list(mine["row_off"]) == [row0, row0, row0 + 16, row0 + 16]
        for _, tile in mine.iterrows():
            window = Window(tile["col_off"], tile["row_off"], 16, 16)
            assert tile.geometry.equals_exact(box(*window_bounds(window, transform)), 1e-6)
            np.testing.assert_array_equal(png(out, tile["path"]), expected_rgb(out, tile, 16))
    assert inside == result.n_plots and 0 < len(result.outside) < len(plots)
    assert "0317010" in result.outside  # the stem ~0.1 m below the raster's bottom edge
    assert set(tiles["site"]) == {"OSBS_403000_3285000"}  # no site column: the ortho's name
    assert not source_scaling(out, ortho).is_identity  # float32 scaled by percentiles


def test_polygons_over_two_grids(testdata, tmp_path) -> None:
    """Rotated plot outlines (1.39 x 1.15 m) over rgb.tif (uint8, 4 bands) and 615.tif
    (float32, 5 bands, nodata): each is cut as a 1.28 m square around its centroid.
    """
    plots = gpd.read_file(testdata / "square_crop_with_plot_ids.geojson")
    plots["label"] = ["absent", "present"]
    labels = tmp_path / "plots.gpkg"
    plots.to_file(labels)
    config = make_config(
        plot_id_column="plot_ids", max_nodata_fraction=1.0, plot_size_m=1.28, gsd_m=0.04
    )
    for name in ("rgb.tif", "615.tif"):
        out = tmp_path / name
        result = tile_plots([testdata / name], labels, config, out, progress=False)
        assert "Resampled" in result.summary()
        tiles = read_tile_manifest(out)
        assert len(tiles) == 8 and set(tiles["plot_id"]) == {"888", "889"}
        with rasterio.open(testdata / name) as src:
            transform = src.transform
        # Even pixel counts per axis nearest to 1.28 m: 58 x 58 px on rgb.tif, 36 x 36 on 615.
        n_x = 2 * math.floor(1.28 / abs(transform.a) / 2 + 0.5)
        n_y = 2 * math.floor(1.28 / abs(transform.e) / 2 + 0.5)
        assert (n_x, n_y) == ((58, 58) if name == "rgb.tif" else (36, 36))
        for _, plot in plots.iterrows():
            centre = max(plot.geometry.geoms, key=lambda g: g.area).centroid
            col, row = ~transform @ (centre.x, centre.y)
            col0, row0 = math.floor(col - n_x / 2 + 0.5), math.floor(row - n_y / 2 + 0.5)
            mine = tiles[tiles["plot_id"] == plot["plot_ids"]].sort_values("tile_id")
            h_x, h_y = n_x // 2, n_y // 2
            assert list(mine["col_off"]) == [col0, col0 + h_x, col0, col0 + h_x]
            assert list(mine["row_off"]) == [row0, row0, row0 + h_y, row0 + h_y]
            assert set(mine["width"]) == {h_x} and set(mine["height"]) == {h_y}
            for _, tile in mine.iterrows():
                np.testing.assert_array_equal(png(out, tile["path"]), expected_rgb(out, tile, 16))


def test_alpha_band_grid(testdata, tmp_path) -> None:
    """WebODM RGBA orthophoto: alpha 0 is nodata; grid tiles of 8 m at ~0.5 m pixels."""
    config = make_config(
        alpha_band=4, gsd_m=0.5, plot_size_m=16.0, tile_size_px=16, max_nodata_fraction=0.5
    )
    out = tmp_path / "grid"
    result = tile_grid([testdata / "orthophoto.tif"], config, out, progress=False)
    tiles = read_tile_manifest(out)
    assert len(tiles) + len(result.nodata_skipped) == (212 // 16) ** 2
    masked = 0
    for _, tile in tiles.iterrows():
        expected = expected_rgb(out, tile, 16, alpha_band=4)
        np.testing.assert_array_equal(png(out, tile["path"]), expected)
        masked += int((expected == 0).all(axis=2).sum())
    assert masked > 0  # some alpha-0 pixels fall in kept tiles and are black


def test_dutch_rd_jpeg_tiled_grid(testdata, tmp_path) -> None:
    config = make_config(tile_size_px=125, gsd_m=0.25, plot_size_m=62.5)
    out = tmp_path / "grid"
    tile_grid([testdata / "test_tiled.tif"], config, out, progress=False)
    tiles = read_tile_manifest(out)
    assert len(tiles) == 64 and set(tiles["crs"]) == {"EPSG:28992"}
    assert tiles.crs.to_epsg() == 28992
    assert tiles.geometry.union_all().area == pytest.approx(250.0 * 250.0)
    tile = tiles.iloc[9].to_dict()
    np.testing.assert_array_equal(png(out, tile["path"]), expected_rgb(out, tile, 125))


def test_real_bad_inputs(testdata, tmp_path) -> None:
    config = make_config()
    for name in (
        "rgb_uint16.tif",
        "2019_YELL_2_541000_4977000_image_crop.tiff",
        "2019_HARV_6_726000_4699000_image_crop_hyperspectral_2019.tif",
    ):
        with pytest.raises(RasterError, match="no CRS") as err:
            tile_grid([testdata / name], config, tmp_path / "x", progress=False)
        assert name in err.value.one_line()
    with pytest.raises(RasterError, match="has 1 band"):
        tile_grid([testdata / "gray.tif"], config, tmp_path / "x", progress=False)
    # Plots in UTM 14N over an orthomosaic in UTM 15N: reprojected, then outside.
    far = gpd.read_file(testdata / "multipoly.geojson")
    far["label"] = "present"
    far.to_file(tmp_path / "outlines.gpkg")
    # Their 3.79 x 3.47 m outlines are no 1.6 m plots: refused before any placement.
    with pytest.raises(VectorError, match=r"plot0001: outline is 3\.79 x 3\.47 m"):
        tile_plots([testdata / "rgb.tif"], tmp_path / "outlines.gpkg", config, tmp_path / "x")
    far["geometry"] = far.geometry.centroid
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(VectorError, match="none of the 8 plot"):
        tile_plots([testdata / "rgb.tif"], tmp_path / "far.gpkg", config, tmp_path / "x")
    assert not (tmp_path / "x" / "tiles.parquet").exists()
