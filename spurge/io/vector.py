"""Reading field plots: GeoPackage, Shapefile, GeoJSON or CSV with x/y columns.

A plot file holds one feature per field plot: a point (the plot centre, around which a square
of the configured size is cut) or a polygon (the plot outline), a class column named in the
species config and, optionally, site and plot-id columns. Everything an ecologist can get
wrong here (no CRS, unknown class values, an empty file, odd geometries) is a
:class:`~spurge.errors.VectorError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from pyproj import CRS
from pyproj.exceptions import CRSError
from shapely.geometry import MultiPoint, Point

from spurge.config import SpeciesConfig
from spurge.errors import VectorError, one_line

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".csv", ".fgb", ".parquet"}

#: Coordinate column pairs recognised in CSV files, tried in this order (case-insensitive).
XY_COLUMN_PAIRS = (
    ("x", "y"),
    ("easting", "northing"),
    ("lon", "lat"),
    ("longitude", "latitude"),
    ("lng", "lat"),
)

#: Columns of the frame :func:`read_plots` returns, besides ``geometry``.
PLOT_COLUMNS = ("plot_id", "label", "site", "kind")


def parse_crs(value: str | CRS | None, path: str | Path | None = None) -> CRS | None:
    """A CRS from user text (``EPSG:4326``, ``32612``, WKT, PROJ), or a VectorError."""
    if value is None or isinstance(value, CRS):
        return value
    text = str(value).strip()
    try:
        return CRS.from_user_input(int(text) if text.isdigit() else text)
    except CRSError as exc:
        raise VectorError(f"not a CRS: {text!r}", path) from exc


def _read_csv(path: Path, crs: CRS | None) -> gpd.GeoDataFrame:
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise VectorError("is empty (no plots)", path) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise VectorError(f"cannot read as CSV ({type(exc).__name__})", path) from exc
    lower = {c.lower().strip(): c for c in frame.columns}
    pair = next(
        ((lower[x], lower[y]) for x, y in XY_COLUMN_PAIRS if x in lower and y in lower), None
    )
    if pair is None:
        names = ", ".join("/".join(p) for p in XY_COLUMN_PAIRS)
        raise VectorError(f"CSV needs plot-centre coordinate columns ({names})", path)
    x_col, y_col = pair
    xy = frame[[x_col, y_col]].apply(pd.to_numeric, errors="coerce")
    bad = xy.isna().any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
        raise VectorError(
            f"{int(bad.sum())} row(s) with missing or non-numeric {x_col}/{y_col} "
            f"(first at line {first})",
            path,
        )
    if crs is None:
        raise VectorError(
            "a CSV carries no CRS: pass the coordinates' CRS (--labels-crs, e.g. EPSG:32612)",
            path,
        )
    geometry = gpd.points_from_xy(xy[x_col], xy[y_col])
    return gpd.GeoDataFrame(frame.drop(columns=[x_col, y_col]), geometry=geometry, crs=crs)


def _read_vector(path: Path) -> gpd.GeoDataFrame:
    try:
        layers = pyogrio.list_layers(path)
        if len(layers) == 0:
            raise VectorError("has no layers (no plots)", path)
        return gpd.read_file(path, layer=str(layers[0][0]) if len(layers) > 1 else None)
    except VectorError:
        raise
    except Exception as exc:  # pyogrio/GDAL raise several types for unreadable files
        raise VectorError(f"cannot read as a vector file ({one_line(exc, 150)})", path) from exc


def _single_geometry(geom: Any) -> Any:
    """Unwrap one-point MultiPoints (common in GeoJSON exports) to Points."""
    if isinstance(geom, MultiPoint) and len(geom.geoms) == 1:
        return Point(geom.geoms[0])
    return geom


def read_plots(
    path: str | Path,
    config: SpeciesConfig,
    *,
    crs: str | CRS | None = None,
) -> gpd.GeoDataFrame:
    """Read field plots into a frame with ``plot_id``, ``label``, ``site``, ``kind``, geometry.

    ``crs`` is the coordinates' CRS for files that carry none (CSV, a Shapefile without .prj);
    a file that has a CRS keeps its own (a differing ``crs`` is an error, not a silent
    override). ``kind`` is ``point`` (plot centre) or ``polygon`` (plot outline). ``site`` is
    null where the file has no site column; :func:`spurge.tiling.tile_plots` then names the
    site after the orthomosaic that covers the plot. Plot ids default to ``plot<row number>``.
    """
    path = Path(path)
    if not path.exists():
        raise VectorError("file not found", path)
    user_crs = parse_crs(crs, path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        plots = _read_csv(path, user_crs)
    else:
        plots = _read_vector(path)
        if plots.crs is None:
            if user_crs is None:
                raise VectorError(
                    "has no CRS (for a Shapefile: no .prj); pass it with --labels-crs", path
                )
            plots = plots.set_crs(user_crs)
        elif user_crs is not None and CRS.from_user_input(plots.crs) != user_crs:
            raise VectorError(
                f"declares {plots.crs.to_string()} but --labels-crs says {user_crs.to_string()}",
                path,
            )
    if len(plots) == 0:
        raise VectorError("is empty (no plots)", path)

    label_col = config.label_column
    if label_col not in plots.columns:
        columns = [c for c in plots.columns if c != "geometry"]
        raise VectorError(f"has no class column {label_col!r} (columns: {columns})", path)
    labels = plots[label_col]
    if labels.isna().any():
        raise VectorError(f"{int(labels.isna().sum())} plot(s) have no {label_col!r} value", path)
    labels = labels.astype(str).str.strip()
    unknown = sorted(set(labels) - set(config.class_names))
    if unknown:
        raise VectorError(
            f"unknown class value(s) {unknown} in column {label_col!r}; "
            f"the config's classes are {config.class_names}",
            path,
        )

    geometry = plots.geometry.map(_single_geometry)
    if geometry.isna().any() or geometry.is_empty.any():
        raise VectorError("has plots without a geometry", path)
    types = set(geometry.geom_type)
    kinds = {"Point": "point", "Polygon": "polygon", "MultiPolygon": "polygon"}
    odd = sorted(types - set(kinds))
    if odd:
        raise VectorError(
            f"plots must be points (centres) or polygons (outlines), found {odd}", path
        )

    site_col = config.site_column
    if site_col and site_col in plots.columns:
        sites = plots[site_col].astype("string").str.strip()
    else:
        sites = pd.Series(pd.NA, index=plots.index, dtype="string")
    id_col = config.plot_id_column
    if id_col and id_col in plots.columns:
        if plots[id_col].isna().any():
            raise VectorError(f"plot(s) with an empty {id_col!r}", path)
        plot_ids = plots[id_col].astype(str).str.strip()
    else:
        plot_ids = pd.Series([f"plot{i + 1:04d}" for i in range(len(plots))], index=plots.index)
    keys = pd.DataFrame({"site": sites.fillna(""), "plot_id": plot_ids})
    dupes = keys.duplicated()
    if dupes.any():
        example = keys[dupes].iloc[0].tolist()
        raise VectorError(f"duplicate plot id(s), e.g. site/plot {example}", path)

    out = gpd.GeoDataFrame(
        {
            "plot_id": plot_ids.astype("string").to_numpy(),
            "label": labels.astype("string").to_numpy(),
            "site": sites.to_numpy(),
            "kind": geometry.geom_type.map(kinds).to_numpy(),
        },
        geometry=gpd.GeoSeries(geometry.to_numpy(), crs=plots.crs),
        crs=plots.crs,
    )
    return out


def plots_in_crs(plots: gpd.GeoDataFrame, crs: Any) -> gpd.GeoDataFrame:
    """The plots in ``crs`` (no copy when they already are in it)."""
    target = CRS.from_user_input(crs)
    if CRS.from_user_input(plots.crs) == target:
        return plots
    return plots.to_crs(target)
