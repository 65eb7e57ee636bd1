from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window, from_bounds
from shapely.geometry import box

from spurge.config import SpeciesConfig
from spurge.errors import SpurgeError
from spurge.io.data_manifest import verify_dataset
from spurge.synthetic import (
    ORIGIN_EASTING,
    ORIGIN_NORTHING,
    PRESENCE_MIN_COVER,
    SITE_SPACING_M,
    synthesize,
)

SIZE = 320


@pytest.fixture
def synth_dir(tmp_path: Path, tiny_config: SpeciesConfig) -> Path:
    synthesize(tmp_path / "syn", tiny_config, sites=2, size_px=SIZE, seed=7)
    return tmp_path / "syn"


def test_georeferencing(synth_dir: Path, tiny_config: SpeciesConfig) -> None:
    for site in range(2):
        with rasterio.open(synth_dir / f"site_{site:03d}.tif") as src:
            assert src.crs.to_epsg() == 32612
            assert (src.width, src.height, src.count) == (SIZE, SIZE, 3)
            assert src.dtypes == ("uint8",) * 3
            left = ORIGIN_EASTING + site * SITE_SPACING_M
            assert src.transform == rasterio.Affine(
                tiny_config.gsd_m, 0, left, 0, -tiny_config.gsd_m, ORIGIN_NORTHING
            )
            assert src.bounds.left == pytest.approx(left)
            assert src.bounds.bottom == pytest.approx(ORIGIN_NORTHING - SIZE * tiny_config.gsd_m)
            assert src.block_shapes == [(256, 256)] * 3 and src.compression.name == "deflate"
            ortho_transform = src.transform
        with rasterio.open(synth_dir / f"site_{site:03d}_truth.tif") as truth:
            assert truth.transform == ortho_transform and truth.crs == src.crs


def test_plots_inside_their_site_and_labelled_from_truth(
    synth_dir: Path, tiny_config: SpeciesConfig
) -> None:
    plots = gpd.read_file(synth_dir / "plots.gpkg")
    assert plots.crs.to_epsg() == 32612
    assert len(plots) == 18 and plots["plot_id"].is_unique
    assert set(plots["label"]) <= {"absent", "present"}
    half = tiny_config.plot_size_m / 2
    for site, group in plots.groupby("site"):
        assert len(group) == 9
        with rasterio.open(synth_dir / f"{site}_truth.tif") as truth:
            site_box = box(*truth.bounds)
            for plot in group.itertuples():
                square = plot.geometry.buffer(half, cap_style="square")
                assert site_box.contains(square)
                window = from_bounds(*square.bounds, transform=truth.transform)
                window = window.round_offsets().round_lengths()
                assert window.width == tiny_config.plot_size_px
                cover = truth.read(1, window=window).mean()
                assert cover == pytest.approx(plot.cover, abs=1e-5)
                expected = "present" if cover >= PRESENCE_MIN_COVER else "absent"
                assert plot.label == expected
                # Quarters inherit the plot label in `spurge tile`, so the truth must agree
                # quarter by quarter: spurge in every quarter of a present plot, none in
                # any quarter of an absent one.
                quarter = tiny_config.tile_size_px
                plot_truth = truth.read(1, window=window)
                covers = [
                    plot_truth[r : r + quarter, c : c + quarter].mean()
                    for r in (0, quarter)
                    for c in (0, quarter)
                ]
                if plot.label == "present":
                    assert min(covers) >= 0.01, (plot.plot_id, covers)
                else:
                    assert max(covers) == 0, (plot.plot_id, covers)


def test_both_classes_and_spurge_colour(tmp_path: Path, tiny_config: SpeciesConfig) -> None:
    result = synthesize(tmp_path, tiny_config, sites=3, size_px=SIZE, seed=1)
    assert {"absent", "present"} <= set(result.labels)
    with rasterio.open(result.orthos[0]) as src, rasterio.open(result.truths[0]) as truth:
        rgb = src.read().astype(float)
        spurge = truth.read(1).astype(bool)
    if spurge.any():
        # Bracts are yellow-green: more green and red than blue, unlike the bare soil.
        excess = (rgb[0] + rgb[1]) / 2 - rgb[2]
        assert excess[spurge].mean() > excess[~spurge].mean() + 10


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, tiny_config) -> None:
    a = synthesize(tmp_path / "a", tiny_config, sites=1, size_px=SIZE, seed=3)
    b = synthesize(tmp_path / "b", tiny_config, sites=1, size_px=SIZE, seed=3)
    c = synthesize(tmp_path / "c", tiny_config, sites=1, size_px=SIZE, seed=4)
    for name in ("site_000.tif", "site_000_truth.tif", "plots.gpkg"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name
    assert (a.out_dir / "site_000.tif").read_bytes() != (c.out_dir / "site_000.tif").read_bytes()


def test_too_small_site_is_a_clear_error(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(SpurgeError, match="too small for nine 3.2 m plots"):
        synthesize(tmp_path, tiny_config, sites=1, size_px=100, seed=0)
    assert not list(tmp_path.glob("*.tif"))


def test_manifest_verifies_and_detects_tampering(synth_dir: Path) -> None:
    report = verify_dataset(synth_dir / "dataset.yaml")
    assert report.ok and len(report.ok_files) == 5
    with rasterio.open(synth_dir / "site_001.tif", "r+") as dst:
        dst.write(np.zeros((3, 4, 4), dtype=np.uint8), window=Window(0, 0, 4, 4))
    (synth_dir / "site_000_truth.tif").unlink()
    report = verify_dataset(synth_dir / "dataset.yaml")
    assert not report.ok
    assert report.mismatched == ["site_001.tif"]
    assert report.missing == ["site_000_truth.tif"]
    assert "1 missing, 1 with a wrong checksum" in report.summary()


def _quarter_covers(synth_dir: Path, config: SpeciesConfig) -> dict[str, tuple[str, list[float]]]:
    """plot id -> (label, truth cover of each of its four quarter tiles)."""
    plots = gpd.read_file(synth_dir / "plots.gpkg")
    half, quarter = config.plot_size_m / 2, config.tile_size_px
    out = {}
    for plot in plots.itertuples():
        with rasterio.open(synth_dir / f"{plot.site}_truth.tif") as truth:
            square = plot.geometry.buffer(half, cap_style="square")
            window = from_bounds(*square.bounds, transform=truth.transform)
            plot_truth = truth.read(1, window=window.round_offsets().round_lengths())
        covers = [
            float(plot_truth[r : r + quarter, c : c + quarter].mean())
            for r in (0, quarter)
            for c in (0, quarter)
        ]
        out[plot.plot_id] = (plot.label, covers)
    return out


def test_partial_quarters_leave_some_quarters_of_present_plots_clear(
    tmp_path: Path, tiny_config: SpeciesConfig
) -> None:
    """The realistic set: present plots hold spurge in 1 to 4 quarters, absent plots none."""
    synthesize(tmp_path, tiny_config, sites=4, size_px=SIZE, seed=7, partial_quarters=True)
    covers = _quarter_covers(tmp_path, tiny_config)
    present = [c for label, c in covers.values() if label == "present"]
    absent = [c for label, c in covers.values() if label == "absent"]
    assert present and absent
    assert all(max(c) == 0 for c in absent)
    assert all(max(c) > 0 for c in present)  # "present" still means spurge somewhere
    infested = [sum(v > 0 for v in c) for c in present]
    # Some plots with spurge in only some quarters (label noise for the quarter tiles).
    assert min(infested) < 4, infested
    assert "--partial-quarters" in (tmp_path / "dataset.yaml").read_text()


_RENDER = """
import hashlib, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from spurge.synthetic import render_site
rgb, truth, _ = render_site(1000, 250, 0.014, np.random.default_rng(11))
print(hashlib.sha256(rgb.tobytes() + truth.tobytes()).hexdigest())
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="CPU feature names are x86's")
def test_same_bytes_whatever_simd_the_cpu_has(tmp_path: Path) -> None:
    """numpy/OpenBLAS pick AVX-512, AVX2 or SSE kernels by CPU, which round differently in
    the last bit; the generator must give the same bytes on each (the demo manifest's
    checksums were recorded on one machine and are checked on others). Disabling the
    features emulates the older CPUs (on a CPU without them all runs take the same path).
    """
    script = tmp_path / "render.py"
    script.write_text(_RENDER)
    repo = str(Path(__file__).resolve().parents[2])
    digests = set()
    for disabled, openblas in (("", ""), ("X86_V4 AVX512_ICL", "Haswell"),
                               ("X86_V3 X86_V4 AVX512_ICL", "Sandybridge")):  # fmt: skip
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled, "OPENBLAS_CORETYPE": openblas}
        run = subprocess.run(
            [sys.executable, str(script), repo], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    assert len(digests) == 1, digests
