"""The resume checkpoint of one map, and the lock that keeps two runs off the same outputs.

``<out>/.spurge-map-<name>/`` holds ``plan.json`` (the fingerprint of everything that decides
the map's bytes: program version, ortho file, model, grid, scaling, settings) and one
``block_<index>.npz`` per finished block of windows. A run with the same fingerprint maps only
the missing blocks; any other fingerprint (another stride, model, threshold...) clears the
folder and starts afresh, so a resumed map has exactly the bytes of a clean one.

``<out>/.spurge-map-.locks/<name>.lock`` is held (``flock``) for the whole of one ortho's map: a
second run writing the same outputs into the same folder stops with a one-line error instead
of deleting the first run's checkpoint. The kernel drops the lock when its process dies, so a
killed run never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spurge import __version__
from spurge.classifier import ModelCard
from spurge.errors import OutputError
from spurge.io.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from spurge.mapping.plan import OrthoPlan
from spurge.mapping.predict import BlockResult
from spurge.mapping.settings import MapSettings

CHECKPOINT_PREFIX = ".spurge-map-"
LOCKS_FOLDER = f"{CHECKPOINT_PREFIX}.locks"  # no ortho stem starts with "."


def fingerprint(plan: OrthoPlan, card: ModelCard, settings: MapSettings) -> str:
    """Hash of everything that decides one map's bytes."""
    stat = plan.ortho.stat()
    payload = {
        "version": __version__,
        "ortho": str(plan.ortho.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "weights": card.weights_sha256,
        "card": card.model_dump(mode="json", exclude={"training"}),
        "grid": plan.grid.to_dict(),
        "scaling": plan.scaling.to_dict(),
        "settings": settings.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class Checkpoint:
    """Finished blocks of one map under ``<out>/.spurge-map-<name>/``."""

    def __init__(self, out: Path, name: str) -> None:
        self.folder = out / f"{CHECKPOINT_PREFIX}{name}"

    def open(self, fingerprint: str) -> None:
        """Keep the blocks of a run with this fingerprint; clear those of any other."""
        plan_file = self.folder / "plan.json"
        if self.folder.exists() and self._recorded(plan_file) != fingerprint:
            shutil.rmtree(self.folder)  # a different plan: its blocks cannot be reused
        try:
            self.folder.mkdir(exist_ok=True)
            remove_stale_temporaries(self.folder)
            if self._recorded(plan_file) != fingerprint:
                write_text_atomic(plan_file, json.dumps({"fingerprint": fingerprint}))
        except OSError as exc:  # a full disk, most likely: say where
            raise OutputError(f"cannot write ({exc.strerror or exc})", plan_file) from exc

    @staticmethod
    def _recorded(plan_file: Path) -> str | None:
        try:
            return json.loads(plan_file.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def block_path(self, index: int) -> Path:
        return self.folder / f"block_{index:06d}.npz"

    def has(self, index: int) -> bool:
        return self.block_path(index).is_file()

    def save(self, part: BlockResult) -> None:
        path = self.block_path(part.index)
        try:
            with atomic_path(path) as tmp:
                part.save(tmp)
        except OSError as exc:  # a full disk, most likely: say which file
            raise OutputError(f"cannot write ({exc.strerror or exc})", path) from exc

    def load(self, index: int) -> BlockResult:
        return BlockResult.load(self.block_path(index))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def up_to_date(paths: dict[str, Path], record: Path, fingerprint: str) -> bool:
    """True when every output exists and the record names this fingerprint."""
    if not record.is_file() or not all(p.is_file() for p in paths.values()):
        return False
    try:
        return json.loads(record.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def output_lock(out: Path, name: str) -> Iterator[None]:
    """Hold ``<out>/.spurge-map-.locks/<name>.lock`` or stop: another live run writes ``name``."""
    folder = out / LOCKS_FOLDER
    path = folder / f"{name}.lock"
    while True:
        folder.mkdir(exist_ok=True)
        try:
            handle = open(path, "a+")  # noqa: SIM115 (closed below, on every path)
        except FileNotFoundError:  # the folder was just removed by a finishing run
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise OutputError(
                f"another spurge map (pid {owner}) is writing the outputs of {name!r} into "
                "this folder; wait for it to finish or choose another --out",
                out,
            ) from None
        # The previous holder may have unlinked the file between our open and our flock:
        # then we hold a lock nobody else can see, so take it again on the new file.
        if _same_inode(handle, path):
            break
        handle.close()
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking, so no one locks a doomed file
        handle.close()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when no other run holds a lock in it


def _same_inode(handle: Any, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
