"""Map writers: Cloud-Optimized GeoTIFFs, and :func:`write_products`, which writes every
product of one map from its arrays.

The products live in one module each: :mod:`spurge.mapping.vectors` (GeoPackage, GeoJSON),
:mod:`spurge.mapping.gpx` (waypoints), :mod:`spurge.mapping.styles` (QGIS styles, colours),
:mod:`spurge.mapping.page` (offline HTML page), :mod:`spurge.mapping.provenance`.

Every file is written under a temporary sibling name and renamed when complete, and every
writer is deterministic (GeoPackage timestamps and folium element ids are pinned; the
creation time follows ``SOURCE_DATE_EPOCH`` when set) so a resumed or distributed run gives
the same bytes as a straight single-process one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from spurge.errors import OutputError
from spurge.io.atomic import atomic_path
from spurge.mapping.gpx import write_gpx
from spurge.mapping.page import OrthoSource, PageInfo, overlay_png, write_html
from spurge.mapping.provenance import Provenance
from spurge.mapping.styles import (
    NODATA,
    RAMP,
    probability_palette,
    write_raster_styles,
)
from spurge.mapping.vectors import presence_polygons, survey_next, write_vectors

__all__ = [
    "NODATA",
    "RAMP",
    "MapArrays",
    "OrthoSource",
    "PageInfo",
    "overlay_png",
    "probability_palette",
    "write_cog",
    "write_gpx",
    "write_html",
    "write_products",
    "write_vectors",
]


def _cog_layout(width: int, height: int) -> tuple[int, int]:
    """(internal tile size, overview levels): GDAL's COG driver wants tiles of >= 128 px;
    overviews halve down to about 64 px, and even a tiny map gets one level."""
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
        try:
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
        except rasterio.errors.RasterioIOError as exc:
            raise OutputError(f"cannot write the raster ({exc})", path) from exc


@dataclass
class MapArrays:
    """One map's cell grids: P(positive) 0-1 and %, class index, uncertainty 0-1 and %."""

    prob01: np.ndarray
    prob_pct: np.ndarray
    classes: np.ndarray
    uncertainty01: np.ndarray
    uncertainty_pct: np.ndarray
    transform: Any
    crs: Any


@dataclass
class ProductsInfo:
    polygons: int = 0
    presence_area_m2: float = 0.0
    notes: list[str] = field(default_factory=list)


def write_products(
    paths: dict[str, Path],
    arrays: MapArrays,
    card: Any,
    threshold: float,
    provenance: Provenance,
    ortho: OrthoSource,
    *,
    survey_points: int,
    min_separation: int,
    extra_tags: dict[str, str] | None = None,
) -> ProductsInfo:
    """Every product of one map except ``map.json`` (the caller's record)."""
    threshold_pct = round(threshold * 100)
    tags = {**provenance.tags(), "spurge_threshold_pct": str(threshold_pct), **(extra_tags or {})}
    a, positive = arrays, card.positive_class
    write_cog(
        paths["prob"],
        a.prob_pct,
        a.transform,
        a.crs,
        colormap=probability_palette(),
        description=f"probability of {positive} (%)",
        unit="%",
        tags=tags,
    )
    class_tags = {**tags, **{f"class_{i}": n for i, n in enumerate(card.class_names)}}
    write_cog(
        paths["presence"],
        a.classes,
        a.transform,
        a.crs,
        description=f"class index ({', '.join(card.class_names)})",
        tags=class_tags,
        overview_resampling="mode",
    )
    write_cog(
        paths["uncertainty"],
        a.uncertainty_pct,
        a.transform,
        a.crs,
        description="uncertainty: class entropy (% of maximum)",
        unit="%",
        tags=tags,
        overview_resampling="average",
    )
    polygons = presence_polygons(a.prob01, threshold, a.transform, a.crs, positive)
    points = survey_next(
        a.uncertainty01, a.prob01, a.transform, a.crs, survey_points, min_separation
    )
    write_vectors(paths, polygons, points, provenance)
    write_gpx(paths["gpx"], points, provenance)
    write_raster_styles(
        paths,
        Path(provenance.ortho_name).stem,
        threshold_pct,
        card.class_names,
        card.positive_index,
    )
    page = write_html(
        paths["html"],
        f"spurge map: {provenance.ortho_name}",
        a.prob_pct,
        a.transform,
        a.crs,
        polygons,
        points,
        threshold_pct,
        provenance,
        ortho,
    )
    area = float(polygons["area_m2"].sum()) if len(polygons) else 0.0
    return ProductsInfo(polygons=len(polygons), presence_area_m2=area, notes=page.notes)
