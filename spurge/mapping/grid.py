"""The sliding-window plan: which ortho windows are read and which output cells they cover.

The output grid shares the orthomosaic's CRS and origin; one cell is ``stride`` ortho pixels,
so every cell corner is an ortho pixel corner. Windows start on cell corners (the last one in
each axis is pushed back to end flush with the ortho's edge so no strip goes unmapped) and a
window contributes to every cell whose centre lies inside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from affine import Affine


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_stride(window: int) -> int:
    """Windows mode's window step without ``--stride``: half a window (at least 1 px). The
    dense pass's refinement mirrors the windows-mode map this gives.
    """
    return max(1, window // 2)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride``, plus one flush with the far edge."""
    if size < window:
        return []
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def covered_cells(start: int, window: int, stride: int) -> tuple[int, int]:
    """Half-open range of cells along one axis whose centres lie inside ``[start, start+window)``.

    Cell ``k`` spans ``[k*stride, (k+1)*stride)``; its centre is ``k*stride + stride/2``. The
    comparison is done on doubled integers so no rounding can move a cell in or out.
    """
    first = max(0, _ceil_div(2 * start - stride, 2 * stride))
    stop = _ceil_div(2 * (start + window) - stride, 2 * stride)
    return first, max(stop, first + 1)


@dataclass(frozen=True)
class MapGrid:
    """Window and cell geometry of one orthomosaic (all sizes in ortho pixels)."""

    width: int
    height: int
    window_w: int
    window_h: int
    stride_x: int
    stride_y: int
    transform: tuple[float, ...]  # the ortho's affine (a, b, c, d, e, f)

    @property
    def cols(self) -> int:
        """Output cells across (the last one may reach past the ortho's edge)."""
        return _ceil_div(self.width, self.stride_x)

    @property
    def rows(self) -> int:
        return _ceil_div(self.height, self.stride_y)

    @property
    def cell_transform(self) -> Affine:
        """Affine of the output grid: the ortho's, scaled by the stride (same origin)."""
        return Affine(*self.transform[:6]) @ Affine.scale(self.stride_x, self.stride_y)

    @property
    def col_starts(self) -> list[int]:
        return window_starts(self.width, self.window_w, self.stride_x)

    @property
    def row_starts(self) -> list[int]:
        return window_starts(self.height, self.window_h, self.stride_y)

    @property
    def n_windows(self) -> int:
        return len(self.col_starts) * len(self.row_starts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Block:
    """A rectangle of windows (indices into the row/col start lists) mapped as one task."""

    index: int
    win_rows: tuple[int, int]
    win_cols: tuple[int, int]

    @property
    def n_windows(self) -> int:
        return (self.win_rows[1] - self.win_rows[0]) * (self.win_cols[1] - self.win_cols[0])


def plan_blocks(grid: MapGrid, block_windows: int) -> list[Block]:
    """Split the windows into square blocks of at most ``block_windows`` per side, row-major."""
    n_r, n_c = len(grid.row_starts), len(grid.col_starts)
    blocks: list[Block] = []
    for r0 in range(0, n_r, block_windows):
        for c0 in range(0, n_c, block_windows):
            blocks.append(
                Block(
                    len(blocks),
                    (r0, min(r0 + block_windows, n_r)),
                    (c0, min(c0 + block_windows, n_c)),
                )
            )
    return blocks


def block_cell_extent(grid: MapGrid, block: Block) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the cells the block's windows touch, clipped to the grid."""
    rows, cols = grid.row_starts, grid.col_starts
    r0 = covered_cells(rows[block.win_rows[0]], grid.window_h, grid.stride_y)[0]
    r1 = covered_cells(rows[block.win_rows[1] - 1], grid.window_h, grid.stride_y)[1]
    c0 = covered_cells(cols[block.win_cols[0]], grid.window_w, grid.stride_x)[0]
    c1 = covered_cells(cols[block.win_cols[1] - 1], grid.window_w, grid.stride_x)[1]
    return r0, min(r1, grid.rows), c0, min(c1, grid.cols)


def cell_weights(
    start: int, window: int, stride: int, first: int, stop: int, blend: str
) -> np.ndarray:
    """1-D weight of each covered cell: 1 for ``mean``, a Gaussian of the offset from the
    window centre (sigma = a quarter window) for ``gaussian``, which trusts window centres
    more than their edges.
    """
    if blend == "mean":
        return np.ones(stop - first)
    centres = (np.arange(first, stop) + 0.5) * stride
    offset = (centres - (start + window / 2)) / window
    return np.exp(-0.5 * (offset / 0.25) ** 2)


def cell_valid_fraction(
    valid: np.ndarray,
    start_y: int,
    start_x: int,
    grid: MapGrid,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> np.ndarray:
    """Fraction of valid pixels of each covered cell inside one window's (resampled) mask."""
    out_h, out_w = valid.shape
    sy, sx = out_h / grid.window_h, out_w / grid.window_w
    fractions = np.zeros((rows[1] - rows[0], cols[1] - cols[0]))
    for i, r in enumerate(range(*rows)):
        y0 = max(0, math.floor((r * grid.stride_y - start_y) * sy))
        y1 = min(out_h, math.ceil(((r + 1) * grid.stride_y - start_y) * sy))
        for j, c in enumerate(range(*cols)):
            x0 = max(0, math.floor((c * grid.stride_x - start_x) * sx))
            x1 = min(out_w, math.ceil(((c + 1) * grid.stride_x - start_x) * sx))
            if y1 > y0 and x1 > x0:
                fractions[i, j] = valid[y0:y1, x0:x1].mean()
    return fractions
