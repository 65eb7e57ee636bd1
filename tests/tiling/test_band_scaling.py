"""Band scaling checked against percentiles computed here with numpy from the raw pixels.

uint16 and float32 orthos, with nodata, at non-default ``scale_percentiles``: sources.json must
hold exactly those percentiles and every tile pixel must be the raw pixel scaled by them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from spurge.io.tiles import read_tile_manifest
from spurge.tiling import tile_grid
from tests.builders import tiny_config

SIZE = 192  # <= 256 px: the 25 sample windows all cover the whole raster
PERCENTILES = (7.0, 91.0)


def _ortho(path: Path, dtype: str, nodata: float) -> np.ndarray:
    rng = np.random.default_rng(5)
    scale = 4000.0 if dtype == "uint16" else 0.6
    data = (rng.gamma(2.0, 1.0, (3, SIZE, SIZE)) * scale / 4).astype(dtype)
    data[:, :40, :] = nodata  # a band of nodata along the top
    if dtype == "float32":
        data[1, 100:110, 100:110] = np.nan  # NaN in one band: the pixel is invalid
    with rasterio.open(
        path, "w", driver="GTiff", width=SIZE, height=SIZE, count=3, dtype=dtype,
        crs="EPSG:32612", transform=from_origin(500_000, 5_200_000, 0.05, 0.05), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
    return data


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0.0), ("float32", -9999.0)])
def test_scaling_is_the_configured_percentiles_of_valid_pixels(
    tmp_path: Path, dtype: str, nodata: float
) -> None:
    data = _ortho(tmp_path / "site.tif", dtype, nodata)
    config = tiny_config(scale_percentiles=PERCENTILES, max_nodata_fraction=1.0)
    tile_grid([tmp_path / "site.tif"], config, tmp_path / "t", progress=False)
    valid = np.all(data != nodata, axis=0) & np.all(np.isfinite(data), axis=0)
    recorded = json.loads((tmp_path / "t" / "sources.json").read_text())["sources"][0]["scaling"]
    low, high = [], []
    for band in range(3):
        lo, hi = np.percentile(data[band][valid].astype(np.float64), PERCENTILES)
        low.append(float(lo))
        high.append(float(hi))
    assert recorded == {"bands": [1, 2, 3], "low": low, "high": high, "dtype": dtype}
    # The default percentiles would give other numbers: the config is really used.
    default = np.percentile(data[0][valid].astype(np.float64), (0.5, 99.5))
    assert abs(default[1] - high[0]) > 0.05 * high[0]
    tiles = read_tile_manifest(tmp_path / "t")
    assert len(tiles) == (SIZE // 32) ** 2
    for row in tiles.itertuples():
        with Image.open(tmp_path / "t" / row.path) as image:
            png = np.asarray(image).astype(np.int32)
        window = (slice(row.row_off, row.row_off + 32), slice(row.col_off, row.col_off + 32))
        raw = data[:, window[0], window[1]].astype(np.float64)
        ok = valid[window]
        for band in range(3):
            expected = np.clip(np.rint((raw[band] - low[band]) / (high[band] - low[band]) * 255),
                               0, 255)  # fmt: skip
            # float32 arithmetic in the code vs float64 here: at most one level apart.
            assert np.abs(png[..., band][ok] - expected[ok]).max(initial=0) <= 1
            assert (png[..., band][~ok] == 0).all()
