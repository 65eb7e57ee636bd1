"""Resuming and all-or-nothing outputs (issue 17: 5 and 9).

- An interrupted map resumed with other settings (stride, model, threshold) starts afresh
  and gives the bytes of a clean run with those settings; the same settings reuse blocks.
- A failure in the middle of writing any one output file leaves nothing under a final name
  and no temporary, and a re-run completes with the bytes of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from spurge.mapping import map_orthos
from spurge.mapping import products as map_products
from spurge.mapping import run as map_run
from spurge.mapping.checkpoint import CHECKPOINT_PREFIX
from spurge.synthetic import synthesize
from tests.builders import TINY_CONFIG
from tests.builders import make_colour_model as make_model

FAST = {"block_windows": 8, "progress": False}


@pytest.fixture(scope="module")
def ortho(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, TINY_CONFIG, sites=1, size_px=320, seed=3).orthos[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("run_weaker"), strength=0.5)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; a record's ``ortho`` path is relative to its own folder, so the
    record is compared without it (two map folders in different places differ only there).
    """
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    for name in [n for n in files if n.endswith(".map.json")]:
        record = json.loads(files[name])
        record.pop("ortho")
        files[name] = json.dumps(record, sort_keys=True).encode()
    return files


def _interrupt_after_two_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = map_run.classify_block, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(map_run, "classify_block", flaky)


@pytest.mark.parametrize(
    "change",
    [{"stride": 8}, {"model": True}, {"threshold": 0.6}],
    ids=["stride", "model", "threshold"],
)
def test_resume_with_other_settings_starts_afresh(
    change, ortho, run_dir, other_model, tmp_path, monkeypatch
):
    settings = {k: v for k, v in change.items() if k != "model"}
    model = other_model if "model" in change else run_dir
    clean = tmp_path / "clean"
    map_orthos([ortho], model, clean, **FAST, **settings)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_after_two_blocks(patch)
        with pytest.raises(KeyboardInterrupt):
            map_orthos([ortho], run_dir, out, **FAST)
    checkpoint = out / f"{CHECKPOINT_PREFIX}{ortho.stem}"
    assert len(list(checkpoint.glob("block_*.npz"))) == 2

    resumed = map_orthos([ortho], model, out, **FAST, **settings)
    assert resumed.maps[0].resumed_blocks == 0  # the old blocks were not reused
    assert not checkpoint.exists()
    assert _files(out) == _files(clean)


def test_resume_with_the_same_settings_reuses_the_blocks(ortho, run_dir, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    map_orthos([ortho], run_dir, clean, **FAST, threshold=0.6)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _interrupt_after_two_blocks(patch)
        with pytest.raises(KeyboardInterrupt):
            map_orthos([ortho], run_dir, out, **FAST, threshold=0.6)
    resumed = map_orthos([ortho], run_dir, out, **FAST, threshold=0.6)
    assert (resumed.maps[0].resumed_blocks, resumed.maps[0].blocks) == (2, 9)
    assert _files(out) == _files(clean)


OUTPUT_FILES = {
    "prob": "cog",
    "presence": "cog",
    "uncertainty": "cog",
    "geojson_presence": "geojson",
    "geojson_survey": "geojson",
    "gpkg": "gpkg",
    "gpx": "gpx",
    "qml": "qml",
    "qml_presence": "qml",
    "qml_uncertainty": "qml",
    "html": "html",
}


class Crash(Exception):
    """The process dying in the middle of a write."""


@pytest.fixture(scope="module")
def reference(ortho, run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    map_orthos([ortho], run_dir, out, **FAST)
    return out


def _assert_no_output(out: Path, ortho: Path) -> None:
    """Only the resume checkpoint is left: no final name, no temporary, no lock."""
    assert sorted(p.name for p in out.iterdir()) == [f"{CHECKPOINT_PREFIX}{ortho.stem}"]


@pytest.mark.parametrize("key", list(OUTPUT_FILES))
def test_crash_mid_write_of_each_output_leaves_nothing(
    key, ortho, run_dir, reference, tmp_path, monkeypatch
):
    writer = map_products.WRITERS[OUTPUT_FILES[key]]

    def half_then_crash(product, paths):
        writer.write(product, paths)
        target = paths[key]
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        raise Crash(f"died writing {target.name}")

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setitem(
            map_products.WRITERS, writer.name, dataclasses.replace(writer, write=half_then_crash)
        )
        with pytest.raises(Crash):
            map_orthos([ortho], run_dir, out, **FAST)
    _assert_no_output(out, ortho)
    again = map_orthos([ortho], run_dir, out, **FAST)
    assert again.maps[0].resumed_blocks == 9  # the blocks survived the failed write
    assert _files(out) == _files(reference)


@pytest.mark.parametrize("failing", ["site_000_prob.tif", "site_000.html", "site_000.map.json"])
def test_crash_while_renaming_into_place_rolls_back(
    failing, ortho, run_dir, reference, tmp_path, monkeypatch
):
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == failing:
            raise Crash(f"died renaming {failing}")
        return real(src, dst)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(map_products.os, "replace", replace)
        with pytest.raises(Crash):
            map_orthos([ortho], run_dir, out, **FAST)
    _assert_no_output(out, ortho)
    map_orthos([ortho], run_dir, out, **FAST)
    assert _files(out) == _files(reference)
