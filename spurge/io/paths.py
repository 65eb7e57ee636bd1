"""Guards on where a stage may write: never onto one of its own inputs.

``spurge map --out`` pointing at the ortho's folder once replaced a GeoPackage-raster ortho by
the vector output of the same name. Every stage calls :func:`refuse_overwriting_inputs` with all
the paths it is about to write before it writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from spurge.errors import OutputError


def _same_file(a: Path, b: Path) -> bool:
    """Same path after resolving links, or the same inode (hard links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: they cannot be the same file
        return False


def refuse_overwriting_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> None:
    """Raise :class:`OutputError` naming the first output path that is also an input."""
    input_paths = [Path(p) for p in inputs]
    for output in outputs:
        out = Path(output)
        for source in input_paths:
            if _same_file(out, source):
                raise OutputError(
                    f"would overwrite the input {source}; choose another --out folder",
                    out,
                )
