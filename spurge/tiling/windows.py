"""Windows: which whole-pixel block of an orthomosaic each plot or grid tile is cut from.

Snapping rule (documented in docs/tile.md). Windows are whole ortho pixels:

* a point plot is an ``n_x x n_y`` block, ``n = round(plot_size_m / pixel_size_m)`` per axis
  (rounded to an even number when quarters are on, so the quarters are equal); its top-left
  pixel is ``floor(c - n / 2 + 0.5)`` where ``c`` is the centre's fractional pixel coordinate:
  the block whose centre is nearest to the plot centre;
* a polygon plot is the block between its bounding box's edges, each rounded to the nearest
  pixel edge (one more column/row on the right/bottom if quarters need an even size);
* a grid tile is ``round(tile_size_px * gsd_m / pixel_size_m)`` pixels per axis, from the
  top-left corner, dropping partial tiles at the right and bottom edges.
"""

from __future__ import annotations

import math
from typing import Any

from rasterio.windows import Window

from spurge.config import SpeciesConfig
from spurge.io.sources import Source


def _pixels(size_m: float, pixel_m: float, even: bool) -> int:
    n = size_m / pixel_m
    if even:
        return 2 * max(1, math.floor(n / 2 + 0.5))
    return max(1, math.floor(n + 0.5))


def snap_point_window(
    x: float, y: float, transform: Any, pixel_m: tuple[float, float], size_m: float, even: bool
) -> Window:
    """The whole-pixel block of ``size_m`` whose centre is nearest to the point (x, y)."""
    n_x, n_y = _pixels(size_m, pixel_m[0], even), _pixels(size_m, pixel_m[1], even)
    col, row = ~transform @ (x, y)
    return Window(math.floor(col - n_x / 2 + 0.5), math.floor(row - n_y / 2 + 0.5), n_x, n_y)


def snap_bounds_window(
    bounds: tuple[float, float, float, float], transform: Any, even: bool
) -> Window:
    """The whole-pixel block between ``bounds``' edges, each rounded to the nearest pixel edge."""
    minx, miny, maxx, maxy = bounds
    cols, rows = zip(~transform @ (minx, maxy), ~transform @ (maxx, miny), strict=True)
    col0, col1 = (math.floor(c + 0.5) for c in sorted(cols))
    row0, row1 = (math.floor(r + 0.5) for r in sorted(rows))
    n_x, n_y = max(1, col1 - col0), max(1, row1 - row0)
    if even:
        n_x, n_y = n_x + n_x % 2, n_y + n_y % 2
    return Window(col0, row0, n_x, n_y)


def quarter_windows(window: Window) -> list[Window]:
    """2 x 2 quarters in reading order: q0 top-left, q1 top-right, q2 bottom-left, q3."""
    half_w, half_h = int(window.width) // 2, int(window.height) // 2
    c0, r0 = int(window.col_off), int(window.row_off)
    return [
        Window(c0 + c * half_w, r0 + r * half_h, half_w, half_h) for r in (0, 1) for c in (0, 1)
    ]


def inside(window: Window, source: Source) -> bool:
    return (
        window.col_off >= 0
        and window.row_off >= 0
        and window.col_off + window.width <= source.width
        and window.row_off + window.height <= source.height
    )


def grid_windows(source: Source, config: SpeciesConfig) -> list[Window]:
    """Non-overlapping windows of one tile's ground size; partial edge tiles dropped."""
    size_m = config.tile_size_px * config.gsd_m
    n_x = _pixels(size_m, source.pixel_size_m[0], even=False)
    n_y = _pixels(size_m, source.pixel_size_m[1], even=False)
    return [
        Window(col, row, n_x, n_y)
        for row in range(0, source.height - n_y + 1, n_y)
        for col in range(0, source.width - n_x + 1, n_x)
    ]
