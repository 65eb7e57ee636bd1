"""The ``spurge tile`` stage: orthomosaics + field plots -> tiles and a GeoParquet manifest.

* :mod:`spurge.tiling.windows`: which whole-pixel block each plot or grid tile is cut from;
* :mod:`spurge.tiling.splits`: train / val / test per plot;
* :mod:`spurge.tiling.run`: the stage itself (``tile_plots``, ``tile_grid``).

``sources.json`` is owned by :mod:`spurge.io.sources`; its readers are re-exported here.
"""

from spurge.io.sources import SOURCES_FILE, Source, load_sources, source_scaling
from spurge.tiling.run import (
    DEFAULT_WORKERS,
    PNG_COMPRESS_LEVEL,
    TileResult,
    scan_sources,
    tile_grid,
    tile_plots,
)
from spurge.tiling.splits import assign_splits, overlap_groups
from spurge.tiling.windows import (
    POLYGON_SIZE_TOLERANCE,
    grid_windows,
    polygon_centres,
    quarter_windows,
    snap_point_window,
)

__all__ = [
    "DEFAULT_WORKERS",
    "PNG_COMPRESS_LEVEL",
    "POLYGON_SIZE_TOLERANCE",
    "SOURCES_FILE",
    "Source",
    "TileResult",
    "assign_splits",
    "grid_windows",
    "load_sources",
    "overlap_groups",
    "polygon_centres",
    "quarter_windows",
    "scan_sources",
    "snap_point_window",
    "source_scaling",
    "tile_grid",
    "tile_plots",
]
