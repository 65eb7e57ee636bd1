from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
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
    assert scaling.dtype == "float32"
    assert all(0 <= lo < hi < 1 for lo, hi in zip(scaling.low, scaling.high, strict=True))
    assert 0.3 < (~valid).mean() < 0.8  # about 59 % nodata (-10000) in this file
    assert rgb[valid].max() == 255 and rgb[valid].min() == 0


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
    assert x_m == pytest.approx(0.0761, rel=0.01)  # 1e-6 degree of longitude at 46.9 N
    assert y_m == pytest.approx(0.1112, rel=0.01)
