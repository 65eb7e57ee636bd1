"""Errors for bad input.

Every problem a user can cause is a :class:`SpurgeError`: the CLI prints it as a single
``error: <file>: <problem>`` line and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

from os import PathLike


class SpurgeError(Exception):
    """A problem with the user's input, named with the file it comes from."""

    def __init__(self, problem: str, path: str | PathLike[str] | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(self.problem.split())
        return f"{self.path}: {text}" if self.path else text


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


class DeviceError(SpurgeError):
    """A compute device (``--device``) that this machine does not have."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.param = "device"


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with all whitespace squashed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
