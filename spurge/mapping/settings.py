"""``MapSettings``: every choice a ``spurge map`` run makes besides its inputs, typed and frozen.

The CLI builds one from its options and :func:`spurge.mapping.map_orthos` takes it; a bad
value is a :class:`~spurge.errors.SpurgeError` naming the CLI flag, raised before anything is
read or written. :meth:`MapSettings.fingerprint` is the part that decides the output bytes: a
resumed run reuses a checkpoint, and a re-run counts as "already mapped", only when it matches.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from spurge.errors import SpurgeError

BLENDS = ("mean", "gaussian")
#: ``windows``: classify overlapping model windows; ``dense``: the backbone fully
#: convolutionally, the head per feature, cells finer than a window (:mod:`spurge.mapping.dense`).
METHODS = ("windows", "dense")
GSD_POLICIES = ("warn", "resample", "refuse")
#: ``tcp://host:8786``, ``tls://...``, ``inproc://...``, ``ucx://...`` or a bare ``host:port``.
_SCHEDULER_ADDRESS = re.compile(
    r"^(?:(?:tcp|tls|inproc|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+)(?::\d+|/[\w./-]+)$"
)


@dataclass(frozen=True)
class MapSettings:
    """How to map: window step, threshold, blending, outputs and where blocks run.

    Attributes:
        stride: window step in ortho pixels (None: half a window). One output cell = stride.
        threshold: probability of the positive class at or above which a cell is presence.
        blend: ``mean`` (every covering window counts the same) or ``gaussian`` (window
            centres count more than edges).
        batch_size: windows per model forward; with the window size it bounds memory.
        block_windows: windows per side of a block (the unit of resuming and of Dask tasks).
        survey_points: how many "survey next" points (most uncertain cells) to write.
        gsd_policy: when the ortho's pixel size is more than ``gsd_tolerance`` times off the
            model's GSD: ``warn`` (and resample), ``resample`` (silently) or ``refuse``.
        gsd_tolerance: the factor above.
        outputs: names of :data:`spurge.mapping.products.WRITERS` to write (None: all).
        dask_workers: run blocks on a ``dask.distributed.LocalCluster`` of this many workers.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``) instead.
        processes: LocalCluster workers as processes (True) or threads (False).
        progress: show progress bars (None: when stderr is a terminal).
        method: ``dense`` or ``windows`` (:data:`METHODS`); None (the default): dense where
            the model's backbone can run densely and no ``stride`` is asked for, windows
            otherwise (:func:`spurge.mapping.map_orthos` decides and the summary says so).
        cell_size: dense output cell in metres (None: one backbone feature step).
        refine_band: dense mode classifies alone (exactly as windows mode) every window half
            a window off the lattice whose pooled probability, or the windows-mode blend of a
            cell it covers, lies within this band of ``threshold``; 0 approximates them all
            (fastest). See :class:`spurge.mapping.dense.Refinement`.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps`` (:func:`spurge.device.resolve_device`);
            :func:`spurge.mapping.map_orthos` resolves it before the fingerprint is taken,
            since fp16 on a GPU changes the bytes.
    """

    stride: int | None = None
    threshold: float = 0.5
    blend: str = "mean"
    batch_size: int = 64
    block_windows: int = 16
    survey_points: int = 10
    gsd_policy: str = "warn"
    gsd_tolerance: float = 1.5
    outputs: tuple[str, ...] | None = None
    dask_workers: int | None = None
    scheduler: str | None = None
    processes: bool = True
    progress: bool | None = field(default=None, compare=False)
    method: str | None = None
    cell_size: float | None = None
    refine_band: float = 0.05
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise SpurgeError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.cell_size is not None and self.method == "windows":
            raise SpurgeError("--cell-size is for --method dense (windows cells are the --stride)")
        if self.stride is not None and self.method == "dense":
            raise SpurgeError("--stride is for --method windows (dense cells are the --cell-size)")
        if self.stride is not None and self.cell_size is not None:
            raise SpurgeError("--stride (windows) and --cell-size (dense) exclude each other")
        if self.cell_size is not None and not self.cell_size > 0:
            raise SpurgeError(
                f"--cell-size must be a positive number of metres, got {self.cell_size}"
            )
        if not 0 <= self.refine_band <= 0.5:
            raise SpurgeError(f"--refine-band must be between 0 and 0.5, got {self.refine_band}")
        if not 0 < self.threshold < 1:
            raise SpurgeError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.stride is not None and self.stride < 1:
            raise SpurgeError(f"--stride must be a positive number of pixels, got {self.stride}")
        if self.blend not in BLENDS:
            raise SpurgeError(f"--blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.gsd_policy not in GSD_POLICIES:
            raise SpurgeError(
                f"--gsd must be one of {', '.join(GSD_POLICIES)}, got {self.gsd_policy!r}"
            )
        if self.batch_size < 1 or self.block_windows < 1:
            raise SpurgeError("--batch-size and block_windows must be at least 1")
        if self.survey_points < 0:
            raise SpurgeError(f"--survey-points must be 0 or more, got {self.survey_points}")
        if self.gsd_tolerance < 1:
            raise SpurgeError(f"gsd_tolerance must be at least 1, got {self.gsd_tolerance}")
        self._check_dask()
        if self.outputs is not None:
            object.__setattr__(self, "outputs", parse_outputs(self.outputs))

    def _check_dask(self) -> None:
        if self.dask_workers is not None and self.scheduler is not None:
            raise SpurgeError("give either --dask-workers or --scheduler, not both")
        if self.dask_workers is not None and self.dask_workers < 1:
            raise SpurgeError(f"--dask-workers must be at least 1, got {self.dask_workers}")
        if self.scheduler is not None and not _SCHEDULER_ADDRESS.match(self.scheduler):
            raise SpurgeError(
                f"--scheduler {self.scheduler!r} is not a Dask scheduler address "
                "(expected tcp://host:port)"
            )

    @property
    def writer_names(self) -> tuple[str, ...]:
        """The outputs to write, in registry order."""
        from spurge.mapping.products import WRITERS

        wanted = self.outputs if self.outputs is not None else tuple(WRITERS)
        return tuple(name for name in WRITERS if name in wanted)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide a map's bytes (not where or how visibly it was computed)."""
        values = asdict(self)
        # Where and how visibly blocks run, and how a far-off GSD is reported, change no byte.
        for key in ("dask_workers", "scheduler", "processes", "progress", "outputs",
                    "gsd_policy", "gsd_tolerance"):  # fmt: skip
            values.pop(key)
        values["outputs"] = list(self.writer_names)
        return values


def parse_outputs(outputs: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Output names (a sequence or ``"cog,gpkg"``), each one of the ``WRITERS`` registry."""
    from spurge.mapping.products import WRITERS

    if isinstance(outputs, str):
        outputs = tuple(o for o in outputs.split(","))
    names = tuple(o.strip() for o in outputs if o.strip())
    unknown = [o for o in names if o not in WRITERS]
    if unknown or not names:
        raise SpurgeError(
            f"--outputs: {unknown[0] if unknown else ''!r}: choose from {', '.join(WRITERS)}"
        )
    return names
