"""``spurge map``: sliding-window presence maps over whole orthomosaics.

- :mod:`spurge.mapping.grid`: which windows are read and which output cells they cover.
- :mod:`spurge.mapping.predict`: one block of windows -> blended cell sums (a Dask task).
- :mod:`spurge.mapping.writers`: COG, GeoJSON/GeoPackage, QGIS style, folium page.
- :mod:`spurge.mapping.run`: :func:`map_orthos`, resuming, Dask, merging.
"""

from spurge.mapping.grid import MapGrid
from spurge.mapping.run import GsdWarning, MapResult, OrthoMap, map_orthos

__all__ = ["GsdWarning", "MapGrid", "MapResult", "OrthoMap", "map_orthos"]
