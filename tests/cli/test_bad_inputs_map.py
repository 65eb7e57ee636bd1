"""Bad-input matrix, ``spurge map`` part (issue 14: 1, 10, 11, 12, 13, 17).

Same checks as :mod:`tests.cli.test_bad_inputs`, whose inputs and helpers this reuses: one
``error:`` line, exit 1, no traceback, inputs' SHA-256 unchanged, nothing under a final
output name and no temporary left behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from spurge.io.atomic import TMP_PREFIX
from tests.cli import test_bad_inputs as matrix
from tests.cli.test_bad_inputs import (
    CRS_UTM12N,
    GSD_M,
    ORIGIN_X,
    ORIGIN_Y,
    ORTHO_PX,
    World,
    _texture,
    _used_inputs,
    assert_nothing_written,
    assert_one_line_error,
    checksums,
    invoke,
    leftover_temporaries,
    write_ortho,
)
from tests.conftest import REPO_ROOT

world = matrix.world  # the matrix's inputs: a module-scoped fixture

FINAL_SUFFIXES = (
    "_prob.tif", "_presence.tif", "_uncertainty.tif", "_presence.geojson", "_survey.geojson",
    "_survey.gpx", ".gpkg", "_prob.qml", "_presence.qml", "_uncertainty.qml", ".html",
    ".map.json",
)  # fmt: skip


def _map(ortho: Path, model: Path, out: Path, *extra: str):
    return invoke("map", str(ortho), "--model", str(model), "--out", str(out), *extra)


def _finals(out: Path, name: str) -> list[Path]:
    return [out / f"{name}{s}" for s in FINAL_SUFFIXES if (out / f"{name}{s}").exists()]


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# 1. An output that would replace an input
# ---------------------------------------------------------------------------------------------


def _gpkg_raster(path: Path) -> Path:
    data = _texture(3).astype(np.uint8)
    profile = dict(
        driver="GPKG", width=ORTHO_PX, height=ORTHO_PX, count=3, dtype="uint8", crs=CRS_UTM12N,
        transform=from_origin(ORIGIN_X, ORIGIN_Y, GSD_M, GSD_M),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_geopackage_raster_ortho_is_not_replaced_by_the_vector_output(
    world: World, tmp_path: Path
) -> None:
    ortho = _gpkg_raster(tmp_path / "site_000.gpkg")
    before, listing = checksums([ortho]), _listing(tmp_path)
    result = _map(ortho, world.model, tmp_path)
    assert_one_line_error(result, "would overwrite the input")
    assert "site_000.gpkg" in result.output
    assert checksums([ortho]) == before
    assert _listing(tmp_path) == listing  # not even a checkpoint or a lock


def test_one_orthos_output_may_not_replace_another_input(world: World, tmp_path: Path) -> None:
    data = _texture(4).astype(np.uint8)
    field = write_ortho(tmp_path / "field.tif", data)
    field_prob = write_ortho(tmp_path / "field_prob.tif", data)
    before, listing = checksums([field, field_prob]), _listing(tmp_path)
    result = invoke(
        "map", str(field), str(field_prob), "--model", str(world.model), "--out", str(tmp_path)
    )
    assert_one_line_error(result, "would overwrite the input")
    assert "field_prob.tif" in result.output
    assert checksums([field, field_prob]) == before
    assert _listing(tmp_path) == listing


# ---------------------------------------------------------------------------------------------
# 10. A bad model card fails before any window is read
# ---------------------------------------------------------------------------------------------


def _bad_card(world: World, root: Path, case: str) -> Path:
    run = root / f"model_{case}"
    shutil.copytree(world.model, run)
    card_path = run / "model.json"
    card = json.loads(card_path.read_text())
    if case == "positive-class-not-a-class":
        card["positive_class"] = "lookalike"
    elif case == "bands-wrong-length":
        card["config"]["bands"] = [1, 2]
    elif case == "tile-size-m-not-px-times-gsd":
        card["tile_size_m"] = card["tile_size_m"] * 10
    elif case == "truncated-weights-without-checksum":
        card["weights_sha256"] = ""
        weights = run / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    card_path.write_text(json.dumps(card))
    return run


BAD_CARDS = {
    "positive-class-not-a-class": "positive_class",
    "bands-wrong-length": "bands",
    "tile-size-m-not-px-times-gsd": "tile_size_m",
    "truncated-weights-without-checksum": "model.safetensors",
}


@pytest.mark.parametrize("case", list(BAD_CARDS))
def test_bad_model_card_fails_before_mapping(
    case: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spurge.mapping.predict as predict

    run = _bad_card(world, tmp_path, case)
    windows_read = []
    real_read = predict.read_window_rgb8
    monkeypatch.setattr(
        predict, "read_window_rgb8", lambda *a, **k: windows_read.append(1) or real_read(*a, **k)
    )
    before = checksums([*_used_inputs(world), run])
    out = tmp_path / "out"
    assert_one_line_error(_map(world.orthos["rgb"], run, out), BAD_CARDS[case])
    assert windows_read == []
    assert_nothing_written(out)
    assert checksums([*_used_inputs(world), run]) == before


# ---------------------------------------------------------------------------------------------
# 11. A full disk
# ---------------------------------------------------------------------------------------------


def _full_disk_after(calls: int):
    """The COG copy (``rasterio.shutil.copy``) writes the first ``calls`` rasters, then half
    a file and ENOSPC: the disk filled up in the middle of the map's outputs.
    """
    import rasterio.shutil

    real = rasterio.shutil.copy
    seen = {"n": 0}

    def copy(src, dst, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] <= calls:
            return real(src, dst, *args, **kwargs)
        Path(dst).write_bytes(b"II*\x00" + b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    return copy


def test_full_disk_names_the_file_and_leaves_no_output(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rasterio.shutil

    monkeypatch.setattr(rasterio.shutil, "copy", _full_disk_after(1))
    out = tmp_path / "out"
    before = checksums(_used_inputs(world))
    result = _map(world.orthos["rgb"], world.model, out)
    assert_one_line_error(result, "No space left on device")
    assert "rgb_presence.tif" in result.output  # the second raster, where the disk filled
    assert _finals(out, "rgb") == []
    assert [p for p in out.rglob(f"{TMP_PREFIX}*")] == []
    assert checksums(_used_inputs(world)) == before
    monkeypatch.undo()
    resumed = _map(world.orthos["rgb"], world.model, out)  # space freed: the map completes
    assert resumed.exit_code == 0, resumed.output
    assert len(_finals(out, "rgb")) == len(FINAL_SUFFIXES)
    assert leftover_temporaries(out) == []


def test_full_disk_while_saving_a_block_names_the_block(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spurge.mapping.predict import BlockResult

    def full(self, path):
        Path(path).write_bytes(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlockResult, "save", full)
    out = tmp_path / "out"
    result = _map(world.orthos["rgb"], world.model, out)
    assert_one_line_error(result, "No space left on device")
    assert "block_000000.npz" in result.output
    assert _finals(out, "rgb") == [] and list(out.rglob(f"{TMP_PREFIX}*")) == []


# ---------------------------------------------------------------------------------------------
# 12. Two runs into one --out
# ---------------------------------------------------------------------------------------------

HOLDER = """\
import sys, time
from pathlib import Path
from spurge.mapping.checkpoint import output_lock
with output_lock(Path(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_run(tmp_path: Path):
    """Start a process that holds the output lock of ``name`` in ``out`` (a live map run)."""
    processes = []

    def start(out: Path, name: str) -> subprocess.Popen:
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(out), name], env=env, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()
        process.stdout.close()


def test_second_run_on_the_same_outputs_is_refused(world: World, tmp_path: Path, other_run) -> None:
    out = tmp_path / "out"
    holder = other_run(out, "rgb")
    checkpoint = out / ".spurge-map-rgb"
    checkpoint.mkdir()
    (checkpoint / "plan.json").write_text('{"fingerprint": "the first run"}')
    (checkpoint / "block_000000.npz").write_bytes(b"the first run's block")
    kept = checksums([checkpoint])
    result = _map(world.orthos["rgb"], world.model, out, "--stride", "8")
    assert_one_line_error(result, "another spurge map")
    assert f"pid {holder.pid}" in result.output
    assert checksums([checkpoint]) == kept  # the first run's checkpoint survives
    assert _finals(out, "rgb") == []


def test_temporaries_of_a_live_run_survive_another_run(
    world: World, tmp_path: Path, other_run
) -> None:
    out = tmp_path / "out"
    holder = other_run(out, "other")  # a live run mapping another ortho into the same folder
    live = out / f"{TMP_PREFIX}{holder.pid}-0123456789ab-other_prob.tif"
    live.write_bytes(b"half written by the live run")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
    dead = out / f"{TMP_PREFIX}{dead_pid}-0123456789ab-gone_prob.tif"
    dead.write_bytes(b"left by a killed run")
    result = _map(world.orthos["rgb"], world.model, out)
    assert result.exit_code == 0, result.output
    assert live.read_bytes() == b"half written by the live run"
    assert not dead.exists()
    assert len(_finals(out, "rgb")) == len(FINAL_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# 13. Ctrl-C during map --dask-workers
# ---------------------------------------------------------------------------------------------

SLOW_BLOCKS = """\
import runpy, sys, time
import spurge.mapping.predict as predict

real = predict.predict_block


def slow(*args, **kwargs):
    time.sleep(2)
    return real(*args, **kwargs)


predict.predict_block = slow
import spurge.mapping.run as run
run.predict_block = slow
sys.argv[0] = "spurge"
runpy.run_module("spurge", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_ctrl_c_with_dask_workers_prints_one_line(world: World, tmp_path: Path) -> None:
    size = 512
    rgb = np.tile(_texture(5), (1, 2, 2)).astype(np.uint8)
    ortho = write_ortho(tmp_path / "site.tif", rgb, size_px=size)
    script = tmp_path / "slow_spurge.py"
    script.write_text(SLOW_BLOCKS)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), "map", str(ortho), "--run", str(world.model), "--out",
         str(out), "--dask-workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / ".spurge-map-site").is_dir():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the map never started"
            time.sleep(0.1)
        time.sleep(3)  # workers busy with blocks
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["error: interrupted; re-run the same command to resume"], stderr
    assert process.returncode == 130


# ---------------------------------------------------------------------------------------------
# 17. A scheduler address that is not one
# ---------------------------------------------------------------------------------------------


def test_scheduler_that_is_not_an_address(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _map(world.orthos["rgb"], world.model, out, "--scheduler", "notaurl")
    assert_one_line_error(result, "'notaurl'")
    assert "scheduler" in result.output
    assert_nothing_written(out)
