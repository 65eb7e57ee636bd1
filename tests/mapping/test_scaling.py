"""Which 8-bit band scaling ``spurge map`` uses (issue 16: docs and code disagreed).

A model trained on tiles of an orthomosaic maps that ortho with the scaling ``spurge tile``
recorded for it in ``sources.json``; an ortho never tiled (or changed since) is scaled from
percentiles of its own pixels, which the tests compute here with numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from spurge.io.raster import BandScaling
from spurge.io.sources import Source, write_sources
from spurge.mapping import map_orthos
from spurge.mapping.plan import SCALING_COMPUTED, SCALING_RECORDED
from tests.builders import TINY_CONFIG, make_colour_model

SIZE = 160  # <= 256 px: the scaling's sample windows are the whole ortho


def _ortho(path: Path, dtype: str, seed: int = 0) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    if dtype == "uint16":
        data = rng.integers(300, 9000, (3, SIZE, SIZE)).astype(np.uint16)
    else:
        data = rng.normal(0.2, 0.05, (3, SIZE, SIZE)).astype(np.float32)
    profile = dict(
        driver="GTiff", width=SIZE, height=SIZE, count=3, dtype=dtype, crs="EPSG:32612",
        transform=from_origin(500_000, 5_200_000, 0.05, 0.05),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, data


def _record(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.map.json").read_text())


def _tiles_with_recorded_scaling(folder: Path, ortho: Path, scaling: BandScaling) -> Path:
    """A tiles folder whose sources.json (written by the real writer) recorded ``scaling``."""
    folder.mkdir()
    stat = ortho.stat()
    with rasterio.open(ortho) as src:
        source = Source(
            path=ortho.resolve(), site=ortho.stem, sha256="0" * 64, crs="EPSG:32612",
            width=src.width, height=src.height, transform=src.transform,
            pixel_size_m=(0.05, 0.05), scaling=scaling, size_bytes=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
        )  # fmt: skip
    write_sources(folder, [source], TINY_CONFIG, "EPSG:32612")
    return folder


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_never_tiled_ortho_is_scaled_from_its_own_percentiles(dtype, tmp_path):
    ortho, data = _ortho(tmp_path / f"{dtype}.tif", dtype)
    run = make_colour_model(tmp_path / "run")
    map_orthos([ortho], run, tmp_path / "out", progress=False, outputs=("cog",))
    scaling = _record(tmp_path / "out", ortho.stem)["scaling"]
    low, high = np.percentile(data.reshape(3, -1).astype(np.float64), [0.5, 99.5], axis=1)
    assert scaling["source"] == SCALING_COMPUTED
    assert scaling["low"] == pytest.approx(low.tolist(), rel=1e-12)
    assert scaling["high"] == pytest.approx(high.tolist(), rel=1e-12)


def test_tiled_ortho_uses_the_scaling_spurge_tile_recorded(tmp_path):
    ortho, _ = _ortho(tmp_path / "site.tif", "uint16")
    # Deliberately unlike the ortho's own percentiles, so using it is visible in the maps.
    recorded = BandScaling((1, 2, 3), (1000.0, 1000.0, 1000.0), (5000.0, 6000.0, 7000.0), "uint16")
    tiles = _tiles_with_recorded_scaling(tmp_path / "tiles", ortho, recorded)
    tiled_run = make_colour_model(tmp_path / "run_tiled", tiles_dir=tiles)
    plain_run = make_colour_model(tmp_path / "run_plain")
    map_orthos([ortho], tiled_run, tmp_path / "tiled", progress=False, outputs=("cog",))
    map_orthos([ortho], plain_run, tmp_path / "plain", progress=False, outputs=("cog",))
    scaling = _record(tmp_path / "tiled", "site")["scaling"]
    assert scaling["source"] == SCALING_RECORDED
    assert (scaling["low"], scaling["high"]) == (list(recorded.low), list(recorded.high))
    assert _record(tmp_path / "plain", "site")["scaling"]["source"] == SCALING_COMPUTED


def test_ortho_changed_since_tiling_falls_back_to_its_own_percentiles(tmp_path):
    ortho, data = _ortho(tmp_path / "site.tif", "uint16")
    recorded = BandScaling((1, 2, 3), (1000.0,) * 3, (5000.0,) * 3, "uint16")
    tiles = _tiles_with_recorded_scaling(tmp_path / "tiles", ortho, recorded)
    stat = ortho.stat()
    os.utime(ortho, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # re-exported since
    run = make_colour_model(tmp_path / "run", tiles_dir=tiles)
    map_orthos([ortho], run, tmp_path / "out", progress=False, outputs=("cog",))
    scaling = _record(tmp_path / "out", "site")["scaling"]
    assert scaling["source"] == SCALING_COMPUTED
    low = np.percentile(data.reshape(3, -1).astype(np.float64), 0.5, axis=1)
    assert scaling["low"] == pytest.approx(low.tolist(), rel=1e-12)


def test_card_records_its_tiles_folder_resolved(tmp_path):
    from spurge.classifier import load_card

    run = make_colour_model(tmp_path / "run", tiles_dir=tmp_path / "tiles" / ".." / "tiles")
    assert load_card(run).tiles_dir == str((tmp_path / "tiles").resolve())
    assert load_card(make_colour_model(tmp_path / "plain")).tiles_dir is None
