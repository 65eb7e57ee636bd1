"""``spurge map``: sliding-window presence maps over whole orthomosaics.

- :mod:`spurge.mapping.settings`: :class:`MapSettings`, every choice of a map run.
- :mod:`spurge.mapping.plan`: :class:`OrthoPlan` (windows, cells, band scaling) per ortho.
- :mod:`spurge.mapping.grid`: which windows are read and which output cells they cover.
- :mod:`spurge.mapping.predict`: one block of windows -> blended cell sums (a Dask task).
- :mod:`spurge.mapping.dense`: dense (fully convolutional) inference, cells finer than a window.
- :mod:`spurge.mapping.checkpoint`: the resume checkpoint and the per-output lock.
- :mod:`spurge.mapping.products`: cell sums -> outputs; the ``WRITERS`` registry (``--outputs``)
  and the all-or-nothing write of one map.
- :mod:`spurge.mapping.writers`: Cloud-Optimized GeoTIFFs.
- :mod:`spurge.mapping.vectors`: presence polygons, survey points, GeoPackage and GeoJSON.
- :mod:`spurge.mapping.gpx`: survey points as GPX waypoints.
- :mod:`spurge.mapping.styles`: colours and QGIS styles (files and GeoPackage defaults).
- :mod:`spurge.mapping.page`: the offline HTML page (ortho, overlay, controls).
- :mod:`spurge.mapping.provenance`: species, model, ortho, time, CRS of a map.
- :mod:`spurge.mapping.run`: :func:`map_orthos`, resuming, Dask, merging.
"""

from spurge.mapping.grid import MapGrid
from spurge.mapping.plan import GsdWarning, OrthoPlan
from spurge.mapping.products import WRITERS, MapProduct, register_writer
from spurge.mapping.run import MapResult, OrthoMap, map_orthos
from spurge.mapping.settings import MapSettings

__all__ = [
    "WRITERS",
    "GsdWarning",
    "MapGrid",
    "MapProduct",
    "MapResult",
    "MapSettings",
    "OrthoMap",
    "OrthoPlan",
    "map_orthos",
    "register_writer",
]
