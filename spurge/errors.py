"""Errors for bad input.

Every problem a user can cause is a :class:`SpurgeError`: the CLI prints it as a single
``error: <file>: <problem>`` line and exits non-zero (``--debug`` shows the traceback).

An error about an argument rather than a file names that argument with ``param``, spelled as
the library's keyword (``stride``, ``device``, ``max_nodata_fraction``). The library prints it
as ``stride: <problem>``; the CLI prints the flag the user typed instead (``--stride:
<problem>``), so neither layer needs to know the other's spelling.
"""

from __future__ import annotations

from os import PathLike
from typing import Any


def squash(text: str, limit: int | None = None) -> str:
    """``text`` on one line: every run of whitespace (newlines included) becomes one space.

    Args:
        text: Any message, e.g. a third-party exception's, which can hold whole tracebacks.
        limit: Cut the result to this many characters, ending in ``...``; ``None`` keeps all.
    """
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)].rstrip() + "..."
    return text


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception as one line: its type and its message with all whitespace squashed.

    Args:
        exc: The exception to describe.
        limit: Cut the message to this many characters (third-party messages can hold whole
            tracebacks or tensors); ``None`` keeps it whole.

    Returns:
        ``"TypeName: message"``, or ``"TypeName"`` when the message is empty.
    """
    text = squash(str(exc), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SpurgeError(Exception):
    """A problem with the user's input, named with the file or parameter it comes from.

    Args:
        problem: What is wrong, in words a user can act on.
        path: The file the problem is in, if any.
        param: The library keyword the problem is about (e.g. ``"stride"``), if any; the CLI
            shows the matching ``--flag``.
    """

    def __init__(
        self,
        problem: str,
        path: str | PathLike[str] | None = None,
        *,
        param: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.param = param
        super().__init__(self.one_line())

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Dask workers, DataLoader workers): keep the file
        # and the parameter, which the default pickling (the message alone) would lose.
        return (_rebuild, (type(self), self.problem, self.path, self.param))

    def one_line(self, param_label: str | None = None) -> str:
        """The error as one line: ``<file>: <param>: <problem>``, omitting what is unknown.

        Args:
            param_label: How to name :attr:`param` (the CLI passes its ``--flag``); defaults
                to the library keyword itself.
        """
        label = param_label or self.param
        return ": ".join(part for part in (self.path, label, squash(self.problem)) if part)


class ConfigError(SpurgeError):
    """A species config (YAML) that is missing, malformed or invalid."""


class RasterError(SpurgeError):
    """An orthomosaic that cannot be read or used (no CRS, corrupt, wrong bands...)."""


class VectorError(SpurgeError):
    """A plot/label file that cannot be read or used."""


class ManifestError(SpurgeError):
    """An artefact manifest (tiles, synthetic, model, data set) that is missing or inconsistent."""


class ModelError(SpurgeError):
    """A model (diffusion or classifier) that cannot be loaded or does not match."""


class OutputError(SpurgeError):
    """An output location that cannot be written."""


class WriteFailed(OutputError, OSError):
    """A file that could not be written (disk full, quota, read-only, I/O error).

    Names the file the user would see (never a temporary) and stays an :class:`OSError`, so
    code that handles a failed write as an OSError keeps working.
    """


class DeviceError(SpurgeError):
    """A compute device (``--device``) that this machine does not have."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem, param="device")


def _rebuild(
    cls: type[SpurgeError], problem: str, path: str | None, param: str | None
) -> SpurgeError:
    """Unpickle a :class:`SpurgeError` subclass whatever its ``__init__`` signature."""
    error = cls.__new__(cls)
    SpurgeError.__init__(error, problem, path, param=param)
    return error
