"""``spurge map`` on real georeferenced rasters from ../shared/testdata (see require_testdata).

Real drone/airborne tiles with odd cases: 4-band uint8, nodata 0 declared, float32
reflectance with 59 % nodata, non-square pixels, southern-hemisphere UTM; plus rasters that
must be refused (one band, no CRS). The model is the test-only colour rule from test_map.
"""

from __future__ import annotations

import json

import pytest
import rasterio
from click.testing import CliRunner
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from spurge.cli import cli
from spurge.errors import RasterError
from spurge.mapping import map_orthos
from tests.builders import make_colour_model as make_model
from tests.conftest import TESTDATA

# Missing data fails under CI=true and skips elsewhere (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("testdata")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize(
    "name",
    ["rgb.tif", "australia.tif", "615.tif", "2018_SJER_3_252000_4107000_image_477.tif"],
)
def test_real_rasters_map_without_error(name, run_dir, tmp_path):
    ortho = TESTDATA / name
    result = map_orthos([ortho], run_dir, tmp_path, gsd_policy="resample", progress=False)
    stem = ortho.stem
    grid = result.maps[0].grid
    with rasterio.open(ortho) as src, rasterio.open(tmp_path / f"{stem}_prob.tif") as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform @ rasterio.Affine.scale(grid.stride_x, grid.stride_y)
        assert dst.width == -(-src.width // grid.stride_x)
        bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        prob = dst.read(1)
    assert cog_validate(tmp_path / f"{stem}_prob.tif", quiet=True)[0]
    assert (prob != 255).any()
    data = json.loads((tmp_path / f"{stem}_survey.geojson").read_text())
    for feature in data["features"]:
        if feature["geometry"]["type"] == "Point":
            lon, lat = feature["geometry"]["coordinates"]
            assert bounds[0] - 1e-4 <= lon <= bounds[2] + 1e-4
            assert bounds[1] - 1e-4 <= lat <= bounds[3] + 1e-4
    assert (tmp_path / f"{stem}.html").stat().st_size > 0


def test_float_raster_with_nodata_keeps_nodata_cells(run_dir, tmp_path):
    result = map_orthos(
        [TESTDATA / "615.tif"], run_dir, tmp_path, gsd_policy="resample", progress=False
    )
    assert result.maps[0].skipped > 0
    with rasterio.open(tmp_path / "615_prob.tif") as dst:
        assert (dst.read(1) == 255).any()


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("gray.tif", "band"),
        ("rgb_uint16.tif", "CRS"),
        ("2019_YELL_2_541000_4977000_image_crop.tiff", "CRS"),
    ],
)
def test_unusable_real_rasters_are_refused(name, needle, run_dir, tmp_path):
    with pytest.raises(RasterError, match=needle):
        map_orthos([TESTDATA / name], run_dir, tmp_path, progress=False)
    res = CliRunner().invoke(
        cli, ["map", str(TESTDATA / name), "--model", str(run_dir), "--out", str(tmp_path / "cli")]
    )
    assert res.exit_code == 1 and res.output.startswith("error: ") and needle in res.output
    assert not (tmp_path / "cli").exists()
