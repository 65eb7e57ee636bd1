"""Write outputs under a temporary name in the target directory, then rename.

A killed or failing process never leaves a half-written file under its final name, and a
rename within one directory is atomic on POSIX file systems.

Temporary names are ``.spurge-tmp-<pid>-<random>-<final name>``: the writer's process id lets
:func:`remove_stale_temporaries` delete only what a dead process left, never the temporaries
of a run still writing into the same folder (process ids are per machine: two machines
writing into one shared folder must not share an output folder).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from spurge.errors import OutputError, SpurgeError, WriteFailed

TMP_PREFIX = ".spurge-tmp-"


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder ({exc.strerror})", path) from exc
    if not path.is_dir():
        raise OutputError("output path exists and is not a folder", path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", path)
    return path


def temporary_sibling(path: Path) -> Path:
    """A unique temporary path beside ``path``, named after the process that owns it.

    The suffix is kept for format drivers that choose by extension.
    """
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}")


def _owner_alive(name: str) -> bool:
    """Whether the process named in a temporary's name still runs (False for old names)."""
    pid = name[len(TMP_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False  # written before names carried the pid: nobody can still own it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, *, check_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched; a
    full disk (or quota, read-only file system, I/O error) becomes a :class:`WriteFailed`
    naming ``path``. ``check_folder=False`` skips the check that the folder is writable, for
    callers that write many files into a folder they checked once (tile PNGs).
    """
    path = Path(path)
    if check_folder:
        ensure_writable_dir(path.parent)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        disk = isinstance(exc, OSError) and exc.errno in DISK_ERRNOS
        if disk and not isinstance(exc, SpurgeError):
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise WriteFailed(f"cannot write ({reason})", final_path(path)) from exc
        raise


#: Write failures that are about the disk, not the program: named as one-line errors.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
_TMP_NAME = re.compile(r"^" + re.escape(TMP_PREFIX) + r"\d+-[0-9a-f]+-")


def final_path(path: Path) -> Path:
    """``path`` with any temporary prefix taken off: the name the user will look for."""
    while _TMP_NAME.match(path.name):
        path = path.with_name(_TMP_NAME.sub("", path.name, count=1))
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries left by killed runs; returns how many were removed.

    Only those whose owner process is gone: a live run's (or this process's) are kept.
    """
    removed = 0
    for stale in Path(folder).glob(f"{TMP_PREFIX}*"):
        if _owner_alive(stale.name):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed += 1
    return removed


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
