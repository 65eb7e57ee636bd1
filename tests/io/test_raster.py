from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod, Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window

from spurge.errors import RasterError
from spurge.io.raster import (
    check_bands,
    compute_scaling,
    open_ortho,
    pixel_size_m,
    read_window_rgb8,
)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("rgb_uint16.tif", "has no CRS"),
        ("2019_HARV_6_726000_4699000_image_crop_hyperspectral_2019.tif", "has no CRS"),
    ],
)
def test_rasters_without_crs_are_refused(testdata: Path, name: str, problem: str) -> None:
    with pytest.raises(RasterError, match=problem) as info, open_ortho(testdata / name):
        pass
    assert info.value.path == str(testdata / name)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00garbage" * 10)
    with pytest.raises(RasterError, match="cannot read as a raster"), open_ortho(corrupt):
        pass
    with pytest.raises(RasterError, match="file not found"), open_ortho(tmp_path / "x.tif"):
        pass


def test_uint8_window_is_pixel_exact_and_masks_nodata(testdata: Path) -> None:
    path = testdata / "OSBS_029.tif"
    window = Window(37, 51, 64, 48)
    with open_ortho(path) as src:
        scaling = compute_scaling(src, [1, 2, 3])
        assert scaling.is_identity
        rgb, valid = read_window_rgb8(src, window, scaling)
        direct = src.read([1, 2, 3], window=window)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected_valid = np.all(direct != 255, axis=0)  # nodata = 255 in this NEON tile
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(rgb[valid], direct.transpose(1, 2, 0)[valid])
    assert (rgb[~valid] == 0).all()


def test_float_reflectance_scaled_from_valid_pixels(testdata: Path) -> None:
    with open_ortho(testdata / "615.tif") as src:
        scaling = compute_scaling(src, [1, 2, 3], (1, 99))
        rgb, valid = read_window_rgb8(src, Window(0, 0, src.width, src.height), scaling)
        raw = src.read([1, 2, 3])
        nodata = src.nodata
    assert scaling.dtype == "float32"
    # 161 x 177 px: the sample windows cover the whole raster, so the scaling must be the
    # 1st/99th percentiles of exactly the pixels that are not nodata (-10000).
    assert nodata == -10000
    good = np.all(raw != nodata, axis=0)
    np.testing.assert_array_equal(valid, good)
    assert int((~good).sum()) == int((~valid).sum())
    for band in range(3):
        lo, hi = np.percentile(raw[band][good].astype(np.float64), (1, 99))
        assert (scaling.low[band], scaling.high[band]) == (float(lo), float(hi))
        expected = np.clip(np.rint((raw[band][good] - lo) / (hi - lo) * 255), 0, 255)
        np.testing.assert_allclose(rgb[..., band][good], expected, atol=1)  # float32 maths
    assert (rgb[~good] == 0).all()


def test_alpha_band_becomes_nodata(testdata: Path) -> None:
    with open_ortho(testdata / "orthophoto.tif") as src:
        alpha = src.read(4)
        scaling = compute_scaling(src, [1, 2, 3])
        _, valid = read_window_rgb8(src, Window(0, 0, src.width, src.height), scaling, alpha_band=4)
    np.testing.assert_array_equal(valid, alpha > 0)
    assert (~valid).sum() == 1021


def test_missing_band_is_named(testdata: Path) -> None:
    path = testdata / "OSBS_029.tif"
    with open_ortho(path) as src, pytest.raises(RasterError, match=r"has 3 band\(s\).*\[4\]"):
        check_bands(src, [1, 2, 3], 4, path)


def test_resampled_read_has_requested_size(testdata: Path) -> None:
    with open_ortho(testdata / "australia.tif") as src:
        scaling = compute_scaling(src, [1, 2, 3])
        rgb, valid = read_window_rgb8(src, Window(0, 0, 100, 100), scaling, out_size=(50, 50))
        direct = src.read([1, 2, 3], window=Window(0, 0, 100, 100)).astype(float)
    assert rgb.shape == (50, 50, 3) and valid.shape == (50, 50)
    assert abs(rgb.mean() - direct.mean()) < 2


def test_pixel_size_in_metres_for_geographic_crs(tmp_path: Path) -> None:
    path = tmp_path / "geo.tif"
    transform = from_origin(-114.0, 46.9, 1e-6, 1e-6)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=4,
        height=4,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=transform,
    ) as dst:
        dst.write(np.zeros((3, 4, 4), dtype=np.uint8))
    with open_ortho(path) as src:
        x_m, y_m = pixel_size_m(src)
    # Independent: geodesic length of one pixel step at the raster's centre (WGS84).
    geod = Geod(ellps="WGS84")
    lat = 46.9 - 2e-6
    assert x_m == pytest.approx(geod.inv(-114.0, lat, -114.0 + 1e-6, lat)[2], rel=1e-4)
    assert y_m == pytest.approx(geod.inv(-114.0, lat, -114.0, lat + 1e-6)[2], rel=1e-4)


@pytest.mark.parametrize(
    ("crs", "lat", "scaled"),
    [("EPSG:3857", 46.7, True), ("EPSG:3395", 14.6, True), ("EPSG:32612", 46.9, False)],
)
def test_pixel_size_in_metres_for_scaled_projections(
    tmp_path: Path, crs: str, lat: float, scaled: bool
) -> None:
    """Web/World Mercator grid metres are not ground metres away from the equator; UTM's
    0.9996 is within SCALE_TOLERANCE and taken at face value.
    """
    lon = -111.0
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    path = tmp_path / "m.tif"
    transform = from_origin(x - 0.1, y + 0.1, 0.1, 0.1)
    profile = {"driver": "GTiff", "width": 2, "height": 2, "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
        dst.write(np.zeros((3, 2, 2), dtype=np.uint8))
    with open_ortho(path) as src:
        x_m, y_m = pixel_size_m(src)
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    (lon0, lon1), (lat0, lat1) = to_ll.transform([x, x + 0.1], [y, y + 0.1])
    geod = Geod(ellps="WGS84")
    ground_x, ground_y = geod.inv(lon0, lat0, lon1, lat0)[2], geod.inv(lon0, lat0, lon0, lat1)[2]
    if scaled:
        # PROJ's factors for EPSG:3857 are those of its sphere: within 0.2 % of the geodesic.
        rel = 2.5e-3 if crs == "EPSG:3857" else 1e-5
        assert (x_m, y_m) == (pytest.approx(ground_x, rel=rel), pytest.approx(ground_y, rel=rel))
        assert abs(x_m / 0.1 - 1) > 0.03  # the correction is real, not rounding
    else:
        assert (x_m, y_m) == (0.1, 0.1)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_band_scaling_by_lookup_is_the_float_formula(dtype):
    """uint16 rasters are scaled through a lookup table (no float copy of a whole region):
    every value gives the byte the float32 formula gives, as float rasters still compute.
    """
    from spurge.io.raster import BandScaling

    rng = np.random.default_rng(0)
    data = rng.integers(0, 65536, (3, 64, 80)).astype(dtype)
    data[:, 0, :4] = [[0, 1, 65534, 65535]] * 3  # both ends of the range
    scaling = BandScaling((1, 2, 3), (100.0, 2000.5, 0.0), (60000.0, 30000.0, 65535.0), dtype)
    got = scaling.apply(data)
    low = np.asarray(scaling.low, np.float32)[:, None, None]
    span = np.asarray(scaling.high, np.float32)[:, None, None] - low
    expected = np.clip(np.rint((data.astype(np.float32) - low) / span * 255), 0, 255)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
