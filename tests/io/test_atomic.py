from __future__ import annotations

from pathlib import Path

import pytest

from spurge.errors import OutputError
from spurge.io.atomic import (
    atomic_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    write_text_atomic,
)


def test_success_renames_into_place(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.txt"
    write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failure_leaves_no_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".spurge-tmp-abc-x.tif").write_bytes(b"x")
    (tmp_path / "keep.tif").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


def test_folder_that_cannot_be_created_is_an_output_error() -> None:
    # /proc refuses new folders even for root, so this holds on CI machines running as root.
    with pytest.raises(OutputError, match="cannot create output folder"):
        ensure_writable_dir(Path("/proc/spurge-test/maps"))


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "maps"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder|cannot create"):
        ensure_writable_dir(blocker)


def test_only_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from spurge.io.atomic import temporary_sibling

    ours = temporary_sibling(tmp_path / "mine.tif")
    assert ours.name.startswith(f".spurge-tmp-{os.getpid()}-") and ours.name.endswith("-mine.tif")
    ours.write_bytes(b"being written")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that no longer runs
    dead = tmp_path / f".spurge-tmp-{child.pid}-0123456789ab-dead.tif"
    dead.write_bytes(b"x")
    (tmp_path / ".spurge-tmp-dir").mkdir()  # an old-style name without a pid
    assert remove_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [ours.name]
