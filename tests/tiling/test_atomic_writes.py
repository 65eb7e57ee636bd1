"""Atomicity of every file ``spurge tile`` writes: tile PNGs, tiles.parquet and sources.json.

A full disk is simulated mid-write: the write puts half its bytes into the file, then raises
``OSError(ENOSPC)``. Nothing may be left under the final name of the file being written (nor
any temporary), and re-running the same command completes with exactly the outputs of an
uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import pathlib
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pytest

from spurge.io.atomic import TMP_PREFIX
from spurge.io.tiles import read_tile_manifest
from spurge.synthetic import synthesize
from spurge.tiling import tile_plots
from tests.builders import tiny_config


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return synthesize(tmp_path_factory.mktemp("synth"), tiny_config(), sites=2, size_px=256)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synth) -> Path:
    out = tmp_path_factory.mktemp("ref") / "tiles"
    tile_plots(synth.orthos, synth.plots, tiny_config(), out, progress=False)
    return out


def _half_then_enospc(original: Callable, matches: Callable[[str], bool], after: int):
    """A ``Path.write_bytes`` that fails on the ``after``-th matching call, half-written."""
    calls: dict[str, object] = {"n": 0}

    def write_bytes(self: pathlib.Path, data: bytes) -> int:
        if matches(self.name):
            calls["n"] = int(calls["n"]) + 1  # type: ignore[call-overload]
            if calls["n"] == after:
                calls["failed"] = self
                original(self, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, data)

    write_bytes.calls = calls  # type: ignore[attr-defined]
    return write_bytes


def _final_name(temporary: Path) -> Path:
    """``.spurge-tmp-<12 hex>-<name>`` -> ``<name>`` in the same folder."""
    assert temporary.name.startswith(TMP_PREFIX)
    return temporary.with_name(temporary.name[len(TMP_PREFIX) + 13 :])


def _finals(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith(TMP_PREFIX)
    }


def _assert_resumes_to_reference(out: Path, reference: Path, synth) -> None:
    assert [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)] == []
    tile_plots(synth.orthos, synth.plots, tiny_config(), out, progress=False)
    ours, theirs = _finals(out), _finals(reference)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        if name.endswith(".png"):
            assert ours[name] == theirs[name], name
    a, b = read_tile_manifest(out), read_tile_manifest(reference)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, 0).all()
    assert json.loads(ours["sources.json"]) == json.loads(theirs["sources.json"])


def test_full_disk_while_writing_a_tile_png(monkeypatch, tmp_path: Path, synth, reference):
    out = tmp_path / "tiles"
    original = pathlib.Path.write_bytes
    fake = _half_then_enospc(original, lambda n: n.endswith(".png"), after=7)
    monkeypatch.setattr(pathlib.Path, "write_bytes", fake)
    with pytest.raises(OSError, match="No space left"):
        tile_plots(synth.orthos, synth.plots, tiny_config(), out, progress=False, workers=1)
    monkeypatch.setattr(pathlib.Path, "write_bytes", original)
    failed = _final_name(fake.calls["failed"])
    assert failed.suffix == ".png" and not failed.exists()
    written = sorted(out.rglob("*.png"))
    # PNGs already in flight complete (at least the 6 before the failure); each one whole.
    assert 6 <= len(written) < len(read_tile_manifest(reference))
    for path in written:
        assert path.read_bytes() == (reference / path.relative_to(out)).read_bytes()
    assert not (out / "tiles.parquet").exists() and not (out / "sources.json").exists()
    _assert_resumes_to_reference(out, reference, synth)


def test_full_disk_while_writing_the_manifest(monkeypatch, tmp_path: Path, synth, reference):
    out = tmp_path / "tiles"
    original = gpd.GeoDataFrame.to_parquet

    def half_parquet(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        if not isinstance(path, (str, Path)):
            return None  # the in-memory copy compared with an existing manifest
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet", half_parquet)
    with pytest.raises(OSError, match="No space left"):
        tile_plots(synth.orthos, synth.plots, tiny_config(), out, progress=False)
    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet", original)
    assert not (out / "tiles.parquet").exists() and not (out / "sources.json").exists()
    assert len(list(out.rglob("*.png"))) == len(read_tile_manifest(reference))
    _assert_resumes_to_reference(out, reference, synth)


def test_full_disk_while_writing_sources_json(monkeypatch, tmp_path: Path, synth, reference):
    out = tmp_path / "tiles"
    original = pathlib.Path.write_bytes
    fake = _half_then_enospc(original, lambda n: n.endswith("sources.json"), after=1)
    monkeypatch.setattr(pathlib.Path, "write_bytes", fake)
    with pytest.raises(OSError, match="No space left"):
        tile_plots(synth.orthos, synth.plots, tiny_config(), out, progress=False)
    monkeypatch.setattr(pathlib.Path, "write_bytes", original)
    assert fake.calls["failed"].name.endswith("-sources.json")
    assert not (out / "sources.json").exists()
    _assert_resumes_to_reference(out, reference, synth)
