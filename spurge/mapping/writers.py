"""Cloud-Optimized GeoTIFFs of a map's cell grids (:func:`write_cog`).

The other products live in one module each, and :mod:`spurge.mapping.products` registers
them as ``--outputs`` choices: :mod:`spurge.mapping.vectors` (GeoPackage, GeoJSON),
:mod:`spurge.mapping.gpx` (waypoints), :mod:`spurge.mapping.styles` (QGIS styles, colours),
:mod:`spurge.mapping.page` (offline HTML page), :mod:`spurge.mapping.provenance`.

Every file is written under a temporary sibling name and renamed when complete, and every
writer is deterministic (GeoPackage timestamps and folium element ids are pinned; the
creation time follows ``SOURCE_DATE_EPOCH`` when set) so a resumed or distributed run gives
the same bytes as a straight single-process one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from spurge.io.atomic import atomic_path
from spurge.mapping.styles import NODATA, RAMP, probability_palette

__all__ = ["NODATA", "RAMP", "probability_palette", "write_cog"]


def _cog_layout(width: int, height: int) -> tuple[int, int]:
    """(internal tile size, overview levels): GDAL's COG driver wants tiles of >= 128 px;
    overviews halve down to about 64 px, and even a tiny map gets one level.
    """
    side = max(width, height)
    blocksize = 512 if side >= 2048 else 256
    return blocksize, max(1, math.ceil(math.log2(max(side, 2) / 64)))


def write_cog(
    path: Path,
    data: np.ndarray,
    transform: Affine,
    crs: CRS,
    *,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    description: str = "",
    unit: str = "",
    tags: dict[str, str] | None = None,
    overview_resampling: str = "nearest",
) -> None:
    """Write a single-band uint8 array as a DEFLATE Cloud-Optimized GeoTIFF with overviews,
    band description and unit (GDAL's COG driver carries both, and the tags, across).

    The array is a map of cells (ortho pixels / stride**2), never the ortho itself.
    """
    height, width = data.shape
    blocksize, levels = _cog_layout(width, height)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": NODATA,
    }
    with rasterio.Env(GDAL_NUM_THREADS="1"), MemoryFile() as memfile:
        with memfile.open(**profile) as mem:
            mem.write(data, 1)
            if colormap is not None:
                mem.write_colormap(1, colormap)
            mem.set_band_description(1, description)
            mem.set_band_unit(1, unit)
            if tags:
                mem.update_tags(**tags)
        # A full disk surfaces as an OSError (RasterioIOError is one): the caller names the
        # output it was writing (spurge.mapping.products.write_products).
        with memfile.open() as src, atomic_path(path) as tmp:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="YES",
                BLOCKSIZE=blocksize,
                OVERVIEW_COUNT=levels,
                OVERVIEW_RESAMPLING=overview_resampling.upper(),
                NUM_THREADS="1",
            )
