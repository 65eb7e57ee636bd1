"""Windows: which whole-pixel block of an orthomosaic each plot or grid tile is cut from.

Snapping rule (documented in docs/tile.md). Windows are whole ortho pixels:

* a point plot is an ``n_x x n_y`` block, ``n = round(plot_size_m / pixel_size_m)`` per axis
  (rounded to an even number when quarters are on, so the quarters are equal); its top-left
  pixel is ``floor(c - n / 2 + 0.5)`` where ``c`` is the centre's fractional pixel coordinate:
  the block whose centre is nearest to the plot centre;
* a polygon plot must be a ``plot_size_m`` square within :data:`POLYGON_SIZE_TOLERANCE` on
  both sides of its minimum rotated rectangle; it is cut as a point plot at the centroid of
  its largest part (so a plot always covers ``plot_size_m``, never a stretched outline);
* a grid tile is ``round(tile_size_px * gsd_m / pixel_size_m)`` pixels per axis, from the
  top-left corner, dropping partial tiles at the right and bottom edges.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
from rasterio.windows import Window

from spurge.config import SpeciesConfig
from spurge.errors import VectorError
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


#: Polygon plots must measure plot_size_m within this fraction on both sides of their minimum
#: rotated rectangle (documented in docs/tile.md).
POLYGON_SIZE_TOLERANCE = 0.2
#: Parts of a MultiPolygon plot other than the largest may add at most this fraction of the
#: largest part's area (slivers from digitising); bigger detached parts are refused.
DETACHED_AREA_FRACTION = 0.05


def _largest_part(geom: Any) -> Any:
    parts = list(getattr(geom, "geoms", [geom]))
    return max(parts, key=lambda part: part.area)


def _check_outline(geom: Any, plot_id: str, size_m: float, path: Path | None) -> None:
    """Refuse a plot outline (in metres) that is not a plot_size_m square within tolerance."""
    if geom.area <= 0:
        raise VectorError(f"plot {plot_id}: degenerate polygon (zero area)", path)
    largest = _largest_part(geom)
    detached = geom.area - largest.area
    if detached > DETACHED_AREA_FRACTION * largest.area:
        raise VectorError(
            f"plot {plot_id}: MultiPolygon with detached parts of {detached:.3g} m2 beside its "
            f"{largest.area:.3g} m2 main part; one outline per plot",
            path,
        )
    corners = list(largest.minimum_rotated_rectangle.exterior.coords)
    sides = sorted(math.dist(corners[i], corners[i + 1]) for i in (0, 1))
    low, high = (1 - POLYGON_SIZE_TOLERANCE) * size_m, (1 + POLYGON_SIZE_TOLERANCE) * size_m
    if not all(low <= side <= high for side in sides):
        raise VectorError(
            f"plot {plot_id}: outline is {sides[1]:.3g} x {sides[0]:.3g} m (minimum rotated "
            f"rectangle) but polygons must be within +-{POLYGON_SIZE_TOLERANCE:.0%} of "
            f"plot_size_m {size_m:g} m on both sides; give plot centres as points instead",
            path,
        )


def polygon_centres(
    plots: gpd.GeoDataFrame, size_m: float, path: Path | None = None
) -> gpd.GeoDataFrame:
    """Polygon plots checked against ``size_m`` and replaced by their centre point.

    Each outline is measured in its local UTM zone; the centre is the centroid of its largest
    part (in the plots' CRS), around which a ``size_m`` square is cut like a point plot's.
    """
    is_polygon = (plots["kind"] == "polygon").to_numpy()
    if not is_polygon.any():
        return plots
    outlines = plots.geometry[is_polygon]
    metric = outlines.to_crs(outlines.estimate_utm_crs())
    for plot_id, geom in zip(plots.loc[is_polygon, "plot_id"], metric, strict=True):
        _check_outline(geom, str(plot_id), size_m, path)
    centres = plots.geometry.copy()
    centres[is_polygon] = [_largest_part(g).centroid for g in outlines]
    return plots.set_geometry(centres)
