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
#: Geometry type -> plot kind.
PLOT_KINDS = {"Point": "point", "Polygon": "polygon", "MultiPolygon": "polygon"}


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
        header = path.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        for delimiter, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if len(frame.columns) == 1 and delimiter in header:
                raise VectorError(
                    f"is {name}-delimited ({delimiter!r}); save it as comma-separated CSV",
                    path,
                )
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


def _read_parquet(path: Path) -> gpd.GeoDataFrame:
    """GeoParquet plots, read with geopandas (GDAL's Parquet driver is optional)."""
    try:
        return gpd.read_parquet(path)
    except Exception as exc:  # pyarrow and geopandas raise several types
        raise VectorError(f"cannot read as GeoParquet ({one_line(exc, 150)})", path) from exc


def _read_vector(path: Path, layer: str | None = None) -> gpd.GeoDataFrame:
    """One layer of an OGR vector file: the only one, or ``layer`` when there are several."""
    try:
        names = [str(row[0]) for row in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio/GDAL raise several types for unreadable files
        raise VectorError(f"cannot read as a vector file ({one_line(exc, 150)})", path) from exc
    if not names:
        raise VectorError("has no layers (no plots)", path)
    if layer is not None and layer not in names:
        raise VectorError(f"has no layer {layer!r} (layers: {', '.join(names)})", path)
    if layer is None and len(names) > 1:
        raise VectorError(
            f"has {len(names)} layers ({', '.join(names)}): choose one with --labels-layer",
            path,
        )
    try:
        frame = gpd.read_file(path, layer=layer or names[0])
    except Exception as exc:
        raise VectorError(f"cannot read as a vector file ({one_line(exc, 150)})", path) from exc
    frame.attrs["layer"] = layer or names[0]
    frame.attrs["n_layers"] = len(names)
    return frame


def _single_geometry(geom: Any) -> Any:
    """Unwrap one-point MultiPoints (common in GeoJSON exports) to Points."""
    if isinstance(geom, MultiPoint) and len(geom.geoms) == 1:
        return Point(geom.geoms[0])
    return geom


def _read_any(path: Path, user_crs: CRS | None, layer: str | None) -> gpd.GeoDataFrame:
    """The file's features with a CRS (its own, or ``user_crs`` where it has none)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if layer is not None:
            raise VectorError("a CSV file has no layers; drop --labels-layer", path)
        return _read_csv(path, user_crs)
    plots = _read_parquet(path) if suffix == ".parquet" else _read_vector(path, layer)
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
    return plots


def _labels(plots: gpd.GeoDataFrame, config: SpeciesConfig, path: Path) -> pd.Series:
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
    return labels


def _geometry(plots: gpd.GeoDataFrame, path: Path) -> gpd.GeoSeries:
    geometry = plots.geometry.map(_single_geometry)
    if geometry.isna().any() or geometry.is_empty.any():
        raise VectorError("has plots without a geometry", path)
    odd = sorted(set(geometry.geom_type) - set(PLOT_KINDS))
    if odd:
        raise VectorError(
            f"plots must be points (centres) or polygons (outlines), found {odd}", path
        )
    check_lonlat_range(gpd.GeoSeries(geometry, crs=plots.crs), path)
    return geometry


def _sites_and_ids(
    plots: gpd.GeoDataFrame, config: SpeciesConfig, path: Path
) -> tuple[pd.Series, pd.Series]:
    site_col = config.site_column
    if site_col and site_col in plots.columns:
        sites = plots[site_col].astype("string").str.strip()
        sites = sites.mask(sites == "")  # a blank site is a missing site, not a site named ""
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
    return sites, plot_ids


def read_plots(
    path: str | Path,
    config: SpeciesConfig,
    *,
    crs: str | CRS | None = None,
    layer: str | None = None,
) -> gpd.GeoDataFrame:
    """Read field plots into a frame with ``plot_id``, ``label``, ``site``, ``kind``, geometry.

    ``crs`` is the coordinates' CRS for files that carry none (CSV, a Shapefile without .prj);
    a file that has a CRS keeps its own (a differing ``crs`` is an error, not a silent
    override). A file with several layers needs ``layer``; the frame's ``attrs["layer"]``
    names the layer read. ``kind`` is ``point`` (plot centre) or ``polygon`` (plot outline).
    ``site`` is null where the file has no site column or a blank value;
    :func:`spurge.tiling.tile_plots` then names the site after the orthomosaic that covers
    the plot. Plot ids default to ``plot<row number>``.
    """
    path = Path(path)
    if not path.exists():
        raise VectorError("file not found", path)
    plots = _read_any(path, parse_crs(crs, path), layer)
    if len(plots) == 0:
        raise VectorError("is empty (no plots)", path)
    labels = _labels(plots, config, path)
    geometry = _geometry(plots, path)
    sites, plot_ids = _sites_and_ids(plots, config, path)
    out = gpd.GeoDataFrame(
        {
            "plot_id": plot_ids.astype("string").to_numpy(),
            "label": labels.astype("string").to_numpy(),
            "site": sites.to_numpy(),
            "kind": geometry.geom_type.map(PLOT_KINDS).to_numpy(),
        },
        geometry=gpd.GeoSeries(geometry.to_numpy(), crs=plots.crs),
        crs=plots.crs,
    )
    out.attrs["layer"] = plots.attrs.get("layer") if plots.attrs.get("n_layers", 1) > 1 else None
    return out


LOOKS_PROJECTED = "coordinates look projected, not lon/lat"


def check_lonlat_range(geometry: gpd.GeoSeries, path: str | Path | None) -> None:
    """Refuse lon/lat geometries outside -180..360 / -90..90 (projected numbers, say)."""
    if geometry.crs is None or not CRS.from_user_input(geometry.crs).is_geographic:
        return
    minx, miny, maxx, maxy = geometry.total_bounds
    if minx < -180 or maxx > 360 or miny < -90 or maxy > 90:
        raise VectorError(
            f"{LOOKS_PROJECTED} (bounds {minx:.6g}, {miny:.6g}, {maxx:.6g}, {maxy:.6g} under "
            f"{CRS.from_user_input(geometry.crs).to_string()}); set the right CRS",
            path,
        )


def plots_in_crs(
    plots: gpd.GeoDataFrame, crs: Any, path: str | Path | None = None
) -> gpd.GeoDataFrame:
    """The plots in ``crs`` (no copy when they already are in it); refuses non-finite results."""
    target = CRS.from_user_input(crs)
    if CRS.from_user_input(plots.crs) == target:
        return plots
    moved = plots.to_crs(target)
    bounds = moved.geometry.bounds.to_numpy()
    if not np.isfinite(bounds).all():
        raise VectorError(
            f"{LOOKS_PROJECTED}: reprojecting them to {target.to_string()} gives NaN/inf "
            "(check the file's CRS or --labels-crs)",
            path,
        )
    return moved
