"""Every `spurge map` output opened by real QGIS (PyQGIS, headless), as a field laptop would.

PyQGIS is Debian's ``python3-qgis`` (``.ci/run`` installs it with ``qgis-providers``); it lives
in the system Python, not the project's venv, so ``qgis_probe.py`` runs as a subprocess of
``/usr/bin/python3`` with ``QT_QPA_PLATFORM=offscreen`` and reports what QGIS loaded as JSON,
plus a render of the probability raster with its style. Skipped where PyQGIS is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from spurge.mapping import map_orthos
from spurge.mapping.styles import POLYGON_RGB, SURVEY_RGB, ramp_stops
from spurge.synthetic import synthesize
from tests.builders import make_colour_model as make_model
from tests.builders import tiny_config as make_tiny_config

SYSTEM_PYTHON = Path("/usr/bin/python3")
PROBE = Path(__file__).with_name("qgis_probe.py")
PX_PER_CELL = 8  # as in qgis_probe.py


def _has_pyqgis() -> bool:
    if not SYSTEM_PYTHON.is_file():
        return False
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, timeout=60
    )
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _has_pyqgis(), reason="needs PyQGIS (python3-qgis)")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path, str]:
    work = tmp_path_factory.mktemp("qgis")
    site = synthesize(work / "synth", make_tiny_config(), sites=1, size_px=256, seed=3)
    out = work / "maps"
    map_orthos([site.orthos[0]], make_model(work / "run"), out, progress=False)
    name = site.orthos[0].stem
    render = work / "render.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(work)}
    done = subprocess.run(
        [str(SYSTEM_PYTHON), str(PROBE), str(out), name, str(render)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out, render, name


def test_every_raster_loads_with_its_style_crs_and_extent(loaded):
    report, out, _, name = loaded
    with rasterio.open(out / f"{name}_prob.tif") as src:
        epsg, bounds = f"EPSG:{src.crs.to_epsg()}", list(src.bounds)
    rasters = report["rasters"]
    for kind in ["prob", "presence", "uncertainty"]:
        assert rasters[kind]["valid"] and rasters[kind]["crs"] == epsg
        assert rasters[kind]["extent"] == pytest.approx(bounds, abs=1e-6)
    # The .qml beside each raster was applied: QGIS's default would be paletted / grey.
    prob = rasters["prob"]
    assert prob["renderer"] == "singlebandpseudocolor"
    assert prob["ramp"] == [[float(v), *rgba] for v, rgba in ramp_stops()]
    assert prob["ramp"][0][4] == 0, "0 % must be transparent so the ortho shows"
    assert rasters["presence"]["renderer"] == "paletted"
    assert rasters["presence"]["classes"] == [[0.0, "absent", 0], [1.0, "present", 200]]
    assert rasters["uncertainty"]["renderer"] == "singlebandpseudocolor"


def test_geopackage_layers_load_with_their_default_styles(loaded):
    report, _, _, _ = loaded
    presence, survey = report["vectors"]["presence"], report["vectors"]["survey_next"]
    assert presence["valid"] and survey["valid"]
    assert presence["crs"] == survey["crs"] == report["rasters"]["prob"]["crs"]
    # Polygons as outlines (no fill) in the page's blue, from the GeoPackage's layer_styles.
    assert presence["symbol_layer"] == "SimpleFill" and presence["props"]["style"] == "no"
    assert presence["props"]["outline_color"] == "{},{},{},255".format(*POLYGON_RGB)
    assert survey["symbol_layer"] == "SimpleMarker" and survey["labels"]
    assert survey["props"]["color"] == "{},{},{},255".format(*SURVEY_RGB)
    assert presence["fields"][1:] == ["class", "area_m2", "mean_prob_pct"]
    assert survey["fields"][1:] == ["name", "class", "rank", "prob_pct", "uncertainty_pct"]


def test_geojson_files_hold_one_geometry_type_each_and_gpx_has_named_waypoints(loaded):
    report, _, _, _ = loaded
    vectors = report["vectors"]
    # QgsWkbTypes.GeometryType: 0 point, 2 polygon.
    assert vectors["presence.geojson"]["geometry"] == 2
    assert vectors["survey.geojson"]["geometry"] == 0
    assert vectors["presence.geojson"]["crs"] == vectors["survey.geojson"]["crs"] == "EPSG:4326"
    assert vectors["presence.geojson"]["count"] == vectors["presence"]["count"] > 0
    assert vectors["survey.geojson"]["count"] == vectors["survey_next"]["count"] == 10
    assert report["gpx_names"] == [f"spurge-{i:02d}" for i in range(1, 11)]


def expected_colours(values: np.ndarray) -> np.ndarray:
    """The styled probability over white, from the QML stops, interpolated independently."""
    stops = ramp_stops()
    xs = [v for v, _ in stops]
    rgba = np.stack(
        [np.interp(values.astype(float), xs, [c[i] for _, c in stops]) for i in range(4)], -1
    )
    alpha = rgba[..., 3:] / 255
    return alpha * rgba[..., :3] + (1 - alpha) * 255


def test_qgis_render_matches_the_cog_cell_by_cell(loaded):
    report, out, render, name = loaded
    with rasterio.open(out / f"{name}_prob.tif") as src:
        values = src.read(1)
    assert report["render_extent"] == pytest.approx(report["rasters"]["prob"]["extent"])
    image = np.asarray(Image.open(render).convert("RGB"), dtype=float)
    assert image.shape[:2] == (values.shape[0] * PX_PER_CELL, values.shape[1] * PX_PER_CELL)
    centres = image[PX_PER_CELL // 2 :: PX_PER_CELL, PX_PER_CELL // 2 :: PX_PER_CELL]
    valid = values != 255
    expected = expected_colours(np.where(valid, values, 0))
    error = np.abs(centres - expected).max(axis=-1)
    assert valid.all() or (np.abs(centres[~valid] - 255) <= 1).all()
    assert error[valid].max() <= 3, np.argwhere(error > 3)[:5]
    # Low probabilities are see-through: 0-9 % cells are close to the white below.
    low = valid & (values < 10)
    assert low.any() and (centres[low].min(axis=-1) > 190).all()
