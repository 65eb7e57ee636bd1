"""Tests for ``spurge map`` on a tiny synthetic orthomosaic.

The model is the fixed colour rule of ``map_support`` (a test-only ``test-colour`` backbone),
which finds the planted spurge patches of ``spurge.synthetic`` well enough to check that the
map puts polygons where the patches are, without waiting for the train stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate
from scipy import ndimage

from spurge.cli import cli
from spurge.errors import ModelError, OutputError, RasterError
from spurge.mapping import GsdWarning, MapSettings, map_orthos
from spurge.mapping import run as map_run
from spurge.synthetic import synthesize
from tests.builders import GSD, TILE_PX
from tests.builders import make_colour_model as make_model
from tests.builders import tiny_config as make_tiny_config

SIZE_PX = 320
STRIDE = TILE_PX // 2


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, make_tiny_config(), sites=1, size_px=SIZE_PX, seed=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def mapped(synth, run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps")
    result = map_orthos([synth.orthos[0]], run_dir, out, block_windows=8, progress=False)
    return result, out


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; map.json without its ortho path, which is relative to the folder."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    for name in [n for n in files if n.endswith(".map.json")]:
        record = json.loads(files[name])
        record.pop("ortho")
        files[name] = json.dumps(record, sort_keys=True).encode()
    return files


def test_outputs_align_with_ortho(synth, mapped):
    result, out = mapped
    name = synth.orthos[0].stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}{suffix}"
        for suffix in [
            "_prob.tif",
            "_presence.tif",
            "_uncertainty.tif",
            "_presence.geojson",
            "_survey.geojson",
            "_survey.gpx",
            ".gpkg",
            "_prob.qml",
            "_presence.qml",
            "_uncertainty.qml",
            ".html",
            ".map.json",
        ]
    )
    with rasterio.open(synth.orthos[0]) as src:
        ortho_crs, ortho_transform = src.crs, src.transform
    rasters = {}
    for kind in ["prob", "presence", "uncertainty"]:
        with rasterio.open(out / f"{name}_{kind}.tif") as dst:
            assert dst.crs == ortho_crs
            assert dst.transform == ortho_transform @ rasterio.Affine.scale(STRIDE)
            assert (dst.width, dst.height) == (SIZE_PX // STRIDE,) * 2
            # Every cell corner is an ortho pixel corner.
            for col, row in [(0, 0), (3, 7), (dst.width, dst.height)]:
                x, y = dst.transform @ (col, row)
                assert (x, y) == pytest.approx(ortho_transform @ (col * STRIDE, row * STRIDE))
            assert dst.dtypes[0] == "uint8" and dst.nodata == 255
            rasters[kind] = dst.read(1)
    prob, presence, uncertainty = rasters["prob"], rasters["presence"], rasters["uncertainty"]
    # No nodata in this ortho: every cell is mapped, in range, and the three rasters agree.
    assert prob.max() <= 100 and uncertainty.max() <= 100
    assert set(np.unique(presence)) == {0, 1}
    assert (presence[prob > 50] == 1).all() and (presence[prob < 50] == 0).all()
    # Two classes: uncertainty is the binary entropy of the probability (rounded to 1 %).
    p = np.clip(prob / 100, 1e-9, 1 - 1e-9)
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2) * 100
    slope = np.abs(np.log((1 - p) / p)) / np.log(2)  # d(entropy %)/d(prob %)
    assert (np.abs(uncertainty - entropy) <= 0.5 + 0.5 * slope + 1e-6).all()
    windows = ((SIZE_PX - TILE_PX) // STRIDE + 1) ** 2
    assert (result.maps[0].windows, result.maps[0].skipped) == (windows, 0)
    assert f"{windows} windows of {TILE_PX}x{TILE_PX} px (0 skipped as nodata)" in (
        result.summary()
    )


def test_probability_is_a_valid_cog(synth, mapped):
    _, out = mapped
    name = synth.orthos[0].stem
    for kind in ["prob", "presence", "uncertainty"]:
        path = out / f"{name}_{kind}.tif"
        valid, errors, _ = cog_validate(path, quiet=True)
        assert valid, errors
        with rasterio.open(path) as dst:
            assert dst.overviews(1), "COG without overviews"
            assert dst.profile["tiled"] and dst.compression.name.lower() == "deflate"
    with rasterio.open(out / f"{name}_prob.tif") as dst:
        colormap = dst.colormap(1)
        assert colormap[255][3] == 0 and colormap[100][3] == 255


def test_geojson_is_wgs84_and_polygons_sit_on_planted_patches(synth, mapped):
    _, out = mapped
    name = synth.orthos[0].stem
    data = json.loads((out / f"{name}_presence.geojson").read_text())
    survey_data = json.loads((out / f"{name}_survey.geojson").read_text())
    assert "crs" not in data and "crs" not in survey_data  # RFC 7946: WGS84 lon/lat implied
    polys = data["features"]
    points = survey_data["features"]
    assert {f["geometry"]["type"] for f in polys} == {"Polygon"}
    assert {f["geometry"]["type"] for f in points} == {"Point"}
    assert polys and points
    assert {f["properties"]["class"] for f in points} == {"survey next"}
    assert all(f["properties"]["class"] == "present" for f in polys)
    for f in polys:
        ring = np.asarray(f["geometry"]["coordinates"][0])
        signed = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert signed > 0, "exterior ring must be counter-clockwise (right-hand rule)"

    native = gpd.read_file(out / f"{name}.gpkg", layer="presence")
    survey = gpd.read_file(out / f"{name}.gpkg", layer="survey_next")
    with rasterio.open(synth.truths[0]) as src:
        assert native.crs == src.crs
        truth, transform = src.read(1), src.transform
    assert len(survey) == len(points)
    # The WGS84 polygons are the native ones, reprojected: within RFC 7946's 7 decimals of a
    # degree (about 1 cm), matched by size.
    wgs84 = gpd.GeoDataFrame.from_features(polys, crs="EPSG:4326").to_crs(native.crs)
    for a, b in zip(
        sorted(wgs84.geometry, key=lambda g: g.area),
        sorted(native.geometry, key=lambda g: g.area),
        strict=True,
    ):
        assert a.hausdorff_distance(b) < 0.01
    # Ground area (equal-area projection) vs the UTM plane: within UTM's scale error (~0.1 %).
    assert native["area_m2"].to_numpy() == pytest.approx(native.area.to_numpy(), rel=2e-3)
    assert sorted(native["area_m2"]) == pytest.approx(
        sorted(f["properties"]["area_m2"] for f in polys)
    )
    assert (native["mean_prob_pct"] >= 50).all()
    # Polygons sit on the planted patches: most mapped area holds spurge nearby (a window is
    # 1.6 m: a presence cell lies within a window of spurge), and the biggest patch is found.
    presence = rasterio.features.rasterize(
        native.geometry, out_shape=truth.shape, transform=transform
    ).astype(bool)
    near_spurge = ndimage.binary_dilation(truth > 0, iterations=TILE_PX)
    assert (presence & near_spurge).sum() / presence.sum() > 0.9
    labels, count = ndimage.label(truth > 0, structure=np.ones((3, 3)))
    sizes = ndimage.sum(truth > 0, labels, index=range(1, count + 1))
    biggest = labels == (int(np.argmax(sizes)) + 1)
    assert (presence & biggest).sum() / biggest.sum() > 0.5
    # Cells far from any spurge (two windows) are absent.
    assert (presence & ~ndimage.binary_dilation(truth > 0, iterations=2 * TILE_PX)).sum() == 0


def test_html_is_self_contained_with_overlay_and_polygons(synth, mapped):
    _, out = mapped
    page = (out / f"{synth.orthos[0].stem}.html").read_text()
    assert "data:image/png;base64," in page and "data:image/webp;base64," in page
    assert "L.imageOverlay" in page and "L.geoJson" in page
    assert "P(present) %" in page and "survey next" in page
    assert "L.control.layers" in page and "tile.openstreetmap.org" in page
    import re

    external = re.findall(r"<(?:script|link)[^>]*(?:src|href)=[\"']https?://", page)
    assert not external, "the page must not load scripts or styles from the internet"
    assert '"area_m2"' in page and '"mean_prob_pct"' in page


def test_qml_style_is_filled_in(synth, mapped):
    _, out = mapped
    qml = (out / f"{synth.orthos[0].stem}_prob.qml").read_text()
    assert "$" not in qml and qml.count("<item ") == 11 and "singlebandpseudocolor" in qml
    import xml.etree.ElementTree as ET

    ET.fromstring(qml.split("\n", 1)[1])  # well-formed past the DOCTYPE


def test_rerun_is_up_to_date_and_byte_identical(synth, run_dir, mapped):
    _, out = mapped
    before = _files(out)
    again = map_orthos([synth.orthos[0]], run_dir, out, block_windows=8, progress=False)
    assert again.maps[0].up_to_date and "already mapped" in again.summary()
    assert _files(out) == before


def test_resume_after_interruption_gives_identical_bytes(
    synth, run_dir, mapped, tmp_path, monkeypatch
):
    _, reference = mapped
    out = tmp_path / "maps"
    calls = {"n": 0}
    real = map_run.classify_block

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a user pressing Ctrl-C mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(map_run, "classify_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        map_orthos([synth.orthos[0]], run_dir, out, block_windows=8, progress=False)
    name = synth.orthos[0].stem
    checkpoint = out / f".spurge-map-{name}"
    assert len(list(checkpoint.glob("block_*.npz"))) == 2
    assert not [p for p in out.iterdir() if p.is_file()], "nothing final after an interruption"

    monkeypatch.setattr(map_run, "classify_block", real)
    resumed = map_orthos([synth.orthos[0]], run_dir, out, block_windows=8, progress=False)
    assert resumed.maps[0].resumed_blocks == 2
    assert not checkpoint.exists()
    assert _files(out) == _files(reference)


def test_local_dask_cluster_gives_same_bytes(synth, run_dir, mapped, tmp_path):
    _, reference = mapped
    out = tmp_path / "dask"
    result = map_orthos(
        [synth.orthos[0]], run_dir, out, block_windows=8, workers=2, processes=False, progress=False
    )
    assert "LocalCluster" in result.summary()
    assert _files(out) == _files(reference)


def test_gaussian_blend_and_stride_change_grid(synth, run_dir, tmp_path):
    result = map_orthos(
        [synth.orthos[0]], run_dir, tmp_path, stride=8, blend="gaussian", progress=False
    )
    with rasterio.open(tmp_path / f"{synth.orthos[0].stem}_prob.tif") as dst:
        assert dst.res == (8 * GSD, 8 * GSD) and dst.width == SIZE_PX // 8
    assert result.maps[0].windows == ((SIZE_PX - TILE_PX) // 8 + 1) ** 2


def test_nodata_windows_are_skipped_and_stay_nodata(synth, run_dir, tmp_path):
    with rasterio.open(synth.orthos[0]) as src:
        profile, data = src.profile, src.read()
    data[:, :, : SIZE_PX // 2] = 0
    profile.update(nodata=0)
    ortho = tmp_path / "half.tif"
    with rasterio.open(ortho, "w", **profile) as dst:
        dst.write(data)
    result = map_orthos([ortho], run_dir, tmp_path / "out", progress=False)
    assert result.maps[0].skipped > 0
    with rasterio.open(tmp_path / "out" / "half_prob.tif") as dst:
        prob = dst.read(1)
    cells = SIZE_PX // 2 // STRIDE
    assert (prob[:, : cells - 1] == 255).all() and (prob[:, cells:] != 255).all()


# ---------------------------------------------------------------------------------------------
# bad input: one-line errors, exit 1, nothing written
# ---------------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(cli, ["map", *args])


def test_cli_maps_and_prints_summary(synth, run_dir, tmp_path):
    out = tmp_path / "cli"
    res = _cli(str(synth.orthos[0]), "--run", str(run_dir), "--out", str(out), "--threshold", "0.6")
    assert res.exit_code == 0, res.output
    assert "Mapped 1 orthomosaic(s)" in res.output and "0.60" in res.output
    assert (out / f"{synth.orthos[0].stem}_prob.tif").is_file()


def _assert_one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0]


def test_band_mismatch_is_refused(synth, tmp_path):
    run = make_model(tmp_path / "run5", make_tiny_config(bands=[1, 2, 5]))
    out = tmp_path / "out"
    _assert_one_line_error(_cli(str(synth.orthos[0]), "--run", str(run), "--out", str(out)), "band")
    assert not out.exists()


def _ortho_without_crs(path: Path) -> Path:
    """A 64 x 64 px GeoTIFF with a geotransform but no CRS."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        transform=from_origin(0, 64, 1, 1),
    ) as dst:
        dst.write(np.zeros((3, 64, 64), dtype=np.uint8))
    return path


def test_ortho_without_crs_is_refused(synth, run_dir, tmp_path):
    ortho = _ortho_without_crs(tmp_path / "nocrs.tif")
    out = tmp_path / "out"
    _assert_one_line_error(_cli(str(ortho), "--run", str(run_dir), "--out", str(out)), "CRS")
    assert not out.exists()


def test_gsd_far_from_model_warns_or_refuses(synth, run_dir, tmp_path):
    with rasterio.open(synth.orthos[0]) as src:
        profile, data = src.profile, src.read()
    profile.update(transform=src.transform @ rasterio.Affine.scale(4))
    coarse = tmp_path / "coarse.tif"
    with rasterio.open(coarse, "w", **profile) as dst:
        dst.write(data)
    _assert_one_line_error(
        _cli(str(coarse), "--run", str(run_dir), "--out", str(tmp_path / "r"), "--gsd", "refuse"),
        "GSD",
    )
    with pytest.warns(GsdWarning):
        result = map_orthos([coarse], run_dir, tmp_path / "w", progress=False)
    assert result.maps[0].grid.window_w == round(TILE_PX / 4)


def test_unwritable_output_is_refused(synth, run_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        map_orthos([synth.orthos[0]], run_dir, blocker / "maps", progress=False)
    _assert_one_line_error(
        _cli(str(synth.orthos[0]), "--run", str(run_dir), "--out", str(blocker)), "folder"
    )


def test_corrupt_model_is_refused(synth, run_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(ModelError):
        map_orthos([synth.orthos[0]], bad, tmp_path / "out", progress=False)
    (bad / "model.json").write_text("{ not json")
    _assert_one_line_error(
        _cli(str(synth.orthos[0]), "--run", str(bad), "--out", str(tmp_path / "out")),
        "model.json",
    )
    assert not (tmp_path / "out").exists()


def test_missing_ortho_is_refused(run_dir, tmp_path):
    with pytest.raises(RasterError):
        map_orthos([tmp_path / "nope.tif"], run_dir, tmp_path / "out", progress=False)


def test_threshold_cell_count_matches_area(mapped, synth):
    _, out = mapped
    name = synth.orthos[0].stem
    with rasterio.open(out / f"{name}_presence.tif") as dst:
        presence = dst.read(1)
    native = gpd.read_file(out / f"{name}.gpkg", layer="presence")
    cell_area = (STRIDE * GSD) ** 2
    # area_m2 is ground area (equal-area projection); UTM's plane differs by its scale (~0.1 %).
    assert native["area_m2"].sum() == pytest.approx((presence == 1).sum() * cell_area, rel=2e-3)
    assert math.isclose(native.union_all().area, native.area.sum(), rel_tol=1e-9)


def test_no_presence_above_threshold_still_writes_every_output(synth, tmp_path):
    undecided = make_model(tmp_path / "run", strength=0.0)
    out = tmp_path / "out"
    result = map_orthos([synth.orthos[0]], undecided, out, threshold=0.6, progress=False)
    assert result.maps[0].polygons == 0
    tmp_path = out
    name = synth.orthos[0].stem
    assert json.loads((tmp_path / f"{name}_presence.geojson").read_text())["features"] == []
    survey = json.loads((tmp_path / f"{name}_survey.geojson").read_text())
    assert {f["geometry"]["type"] for f in survey["features"]} == {"Point"}
    assert len(gpd.read_file(tmp_path / f"{name}.gpkg", layer="presence")) == 0
    assert "none above the threshold" in (tmp_path / f"{name}.html").read_text()


def test_block_region_crops_equal_direct_window_reads(synth, run_dir, tmp_path):
    """The fast path (one read per block, windows cropped) gives the direct reads' numbers."""
    import dataclasses

    from spurge.classifier import load_card
    from spurge.mapping.grid import MapGrid, plan_blocks
    from spurge.mapping.predict import BlockSettings, predict_block

    # Nodata in part of the ortho so masks take part too.
    with rasterio.open(synth.orthos[0]) as src:
        profile, data = src.profile, src.read()
        grid = MapGrid(src.width, src.height, TILE_PX, TILE_PX, 12, 12, tuple(src.transform)[:6])
    data[:, 100:150, 40:300] = 0
    profile.update(nodata=0)
    ortho = tmp_path / "holes.tif"
    with rasterio.open(ortho, "w", **profile) as dst:
        dst.write(data)
    card = load_card(run_dir)
    settings = BlockSettings(
        ortho=str(ortho),
        run_dir=str(run_dir),
        weights_sha256=card.weights_sha256,
        scaling={"bands": [1, 2, 3], "low": [0, 0, 0], "high": [255] * 3, "dtype": "uint8"},
        alpha_band=None,
        tile_size_px=TILE_PX,
        batch_size=7,
        blend="gaussian",
        max_nodata_fraction=0.25,
    )
    direct = dataclasses.replace(settings, crop_from_region=False)
    for block in plan_blocks(grid, 9):
        fast, slow = predict_block(grid, block, settings), predict_block(grid, block, direct)
        assert (fast.row0, fast.col0, fast.windows, fast.skipped) == (
            slow.row0,
            slow.col0,
            slow.windows,
            slow.skipped,
        )
        np.testing.assert_array_equal(fast.sums, slow.sums)
        np.testing.assert_array_equal(fast.weights, slow.weights)


def test_cli_help_lists_the_map_options():
    res = CliRunner().invoke(cli, ["map", "--help"])
    assert res.exit_code == 0
    options = {line.split()[0].rstrip(",") for line in res.output.splitlines() if "  --" in line}
    for option in [
        "--run",
        "--out",
        "--stride",
        "--threshold",
        "--outputs",
        "--dask-workers",
        "--scheduler",
        "--blend",
        "--gsd",
        "--survey-points",
    ]:
        assert option in options, res.output
    # The old names still work (test below) but are not advertised.
    assert "--model" not in res.output and "--workers " not in res.output


@pytest.mark.parametrize(
    "run_flag, workers_flag", [("--run", "--dask-workers"), ("--model", "--workers")]
)
def test_cli_new_and_old_option_names_build_the_same_settings(
    run_flag, workers_flag, synth, run_dir, tmp_path, monkeypatch
):
    seen = {}

    def fake_map(orthos, run, out, settings):
        seen.update(run=run, out=out, settings=settings)
        return map_run.MapResult(out_dir=out)

    monkeypatch.setattr("spurge.mapping.map_orthos", fake_map)
    res = _cli(
        str(synth.orthos[0]), run_flag, str(run_dir), "--out", str(tmp_path), workers_flag, "3",
        "--stride", "7", "--threshold", "0.3", "--outputs", "gpkg,cog",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["run"] == run_dir and seen["out"] == tmp_path
    assert seen["settings"] == MapSettings(
        stride=7, threshold=0.3, dask_workers=3, outputs=("gpkg", "cog"), device="auto"
    )
    assert seen["settings"].writer_names == ("cog", "gpkg")


def test_cli_without_a_run_folder_is_a_usage_error(synth):
    res = _cli(str(synth.orthos[0]))
    assert res.exit_code == 2 and "--run" in res.output


def test_bad_second_ortho_stops_before_anything_is_written(synth, run_dir, tmp_path):
    ortho = _ortho_without_crs(tmp_path / "nocrs.tif")
    with pytest.raises(RasterError, match="CRS"):
        map_orthos([synth.orthos[0], ortho], run_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_scheduler_gives_same_bytes(synth, run_dir, mapped, tmp_path):
    from dask.distributed import LocalCluster

    _, reference = mapped
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        result = map_orthos(
            [synth.orthos[0]],
            run_dir,
            tmp_path,
            block_windows=8,
            scheduler=cluster.scheduler_address,
            progress=False,
        )
    assert "Dask: tcp://" in result.summary() or "Dask: inproc://" in result.summary()
    assert _files(tmp_path) == _files(reference)


def test_outputs_choose_the_writers(synth, run_dir, mapped, tmp_path):
    _, reference = mapped
    out = tmp_path / "some"
    name = synth.orthos[0].stem
    res = _cli(
        str(synth.orthos[0]), "--run", str(run_dir), "--out", str(out), "--outputs", "gpkg,cog"
    )
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        f"{name}{s}"
        for s in ["_prob.tif", "_presence.tif", "_uncertainty.tif", ".gpkg", ".map.json"]
    )
    for file in [w for w in written if not w.endswith(".map.json")]:
        assert (out / file).read_bytes() == (reference / file).read_bytes(), file
    record = json.loads((out / f"{name}.map.json").read_text())
    assert sorted(record["outputs"]) == ["gpkg", "presence", "prob", "uncertainty"]
    # Asking for more outputs later is not "already mapped".
    again = map_orthos([synth.orthos[0]], run_dir, out, block_windows=8, progress=False)
    assert not again.maps[0].up_to_date
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    bad = _cli(str(synth.orthos[0]), "--run", str(run_dir), "--out", str(out), "--outputs", "tif")
    assert (
        bad.exit_code == 2 and "'tif': choose from cog, qml, gpkg, geojson, gpx, html" in bad.output
    )
