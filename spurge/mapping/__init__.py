"""``spurge map``: sliding-window presence maps over whole orthomosaics.

- :mod:`spurge.mapping.grid`: which windows are read and which output cells they cover.
- :mod:`spurge.mapping.predict`: one block of windows -> blended cell sums (a Dask task).
- :mod:`spurge.mapping.writers`: COGs, and every product of one map (:func:`write_products`).
- :mod:`spurge.mapping.vectors`: presence polygons, survey points, GeoPackage and GeoJSON.
- :mod:`spurge.mapping.gpx`: survey points as GPX waypoints.
- :mod:`spurge.mapping.styles`: colours and QGIS styles (files and GeoPackage defaults).
- :mod:`spurge.mapping.page`: the offline HTML page (ortho, overlay, controls).
- :mod:`spurge.mapping.provenance`: species, model, ortho, time, CRS of a map.
- :mod:`spurge.mapping.run`: :func:`map_orthos`, resuming, Dask, merging.
"""

from spurge.mapping.grid import MapGrid
from spurge.mapping.run import GsdWarning, MapResult, OrthoMap, map_orthos

__all__ = ["GsdWarning", "MapGrid", "MapResult", "OrthoMap", "map_orthos"]
