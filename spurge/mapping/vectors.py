"""Vector products: presence polygons, "survey next" points, and the files that hold them.

Units the user sees are percent, named in the field: ``mean_prob_pct``, ``prob_pct``,
``uncertainty_pct`` (0-100, two decimals), like the rasters. ``area_m2`` is true ground area:
computed in a Lambert azimuthal equal-area projection centred on the polygons, whatever the
ortho's CRS (in Web Mercator the planar area can be several times the ground's).

Files: ``<name>.gpkg`` (GeoPackage 1.2, the ortho's CRS, layers ``presence`` and
``survey_next``, provenance in each layer's metadata, default QGIS styles in ``layer_styles``),
``<name>_presence.geojson`` and ``<name>_survey.geojson`` (RFC 7946, one geometry type each).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
from rasterio import features
from scipy import ndimage
from shapely.geometry import Point, shape

from spurge.errors import OutputError
from spurge.io.atomic import atomic_path
from spurge.mapping.gpx import waypoint_name
from spurge.mapping.provenance import Provenance
from spurge.mapping.styles import vector_qml

PINNED_DATE = "2000-01-01T00:00:00.000Z"
POLYGON_COLUMNS = ["class", "area_m2", "mean_prob_pct", "geometry"]
POINT_COLUMNS = ["name", "class", "rank", "prob_pct", "uncertainty_pct", "geometry"]


def normalized_entropy(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Exact uncertainty 0-1 per cell (entropy of the blended classes / log C); NaN = nodata."""
    valid = weights > 0
    probs = np.zeros_like(sums, dtype=float)
    np.divide(sums, weights[None], out=probs, where=valid[None])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=0)
    return np.where(valid, entropy / np.log(len(sums)), np.nan)


def presence_polygons(
    prob01: np.ndarray, threshold: float, transform: Any, crs: Any, class_name: str
) -> gpd.GeoDataFrame:
    """Dissolved polygons of 4-connected presence cells, with ground area and mean P (%)."""
    presence = np.nan_to_num(prob01, nan=0.0) >= threshold
    labels, count = ndimage.label(presence)
    rows = []
    if count:
        means = ndimage.mean(np.nan_to_num(prob01), labels, index=np.arange(1, count + 1))
        for geom, value in features.shapes(
            labels.astype(np.int32), mask=presence, transform=transform, connectivity=4
        ):
            mean = float(means[int(value) - 1]) * 100
            rows.append(
                {"class": class_name, "mean_prob_pct": round(mean, 2), "geometry": shape(geom)}
            )
    gdf = gpd.GeoDataFrame(
        rows, columns=["class", "mean_prob_pct", "geometry"], geometry="geometry", crs=crs
    )
    gdf.insert(1, "area_m2", ground_areas_m2(gdf))
    return gdf


def ground_areas_m2(gdf: gpd.GeoDataFrame) -> list[float]:
    """Areas in m² in an equal-area projection centred on the data (true ground area)."""
    if not len(gdf):
        return []
    lon, lat = gdf.to_crs("EPSG:4326").union_all().centroid.coords[0]
    laea = f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 +units=m +no_defs"
    return [round(float(a), 3) for a in gdf.to_crs(laea).area]


def survey_next(
    uncertainty01: np.ndarray,
    prob01: np.ndarray,
    transform: Any,
    crs: Any,
    n: int,
    min_separation: int,
) -> gpd.GeoDataFrame:
    """The ``n`` most uncertain cells, ranked on exact (unrounded) uncertainty, at least
    ``min_separation`` cells apart so the crew visits different places; cell centres.
    """
    flat = np.where(np.isnan(uncertainty01), -np.inf, uncertainty01).ravel()
    # Highest uncertainty first; exact ties (rare with float values) in raster order.
    order = np.lexsort((np.arange(flat.size), -flat))
    chosen: list[tuple[int, int]] = []
    for index in order:
        if len(chosen) >= n or not np.isfinite(flat[index]):
            break
        r, c = divmod(int(index), uncertainty01.shape[1])
        if all(max(abs(r - r2), abs(c - c2)) >= min_separation for r2, c2 in chosen):
            chosen.append((r, c))
    rows = []
    for rank, (r, c) in enumerate(chosen, start=1):
        x, y = transform @ (c + 0.5, r + 0.5)
        rows.append(
            {
                "name": waypoint_name(rank),
                "class": "survey next",
                "rank": rank,
                "prob_pct": round(float(prob01[r, c]) * 100, 2),
                "uncertainty_pct": round(float(uncertainty01[r, c]) * 100, 2),
                "geometry": Point(x, y),
            }
        )
    return gpd.GeoDataFrame(rows, columns=POINT_COLUMNS, geometry="geometry", crs=crs)


def write_geojson(path: Path, frame: gpd.GeoDataFrame, provenance: Provenance) -> None:
    """RFC 7946 GeoJSON: WGS84 lon/lat, counter-clockwise exterior rings (GDAL's mode)."""
    with atomic_path(path) as tmp:
        pyogrio.write_dataframe(
            frame.to_crs("EPSG:4326"),
            tmp,
            driver="GeoJSON",
            layer=path.stem,
            RFC7946="YES",
            WRITE_NAME="NO",
            DESCRIPTION=provenance.describe(),
        )


def write_gpkg(
    path: Path, polygons: gpd.GeoDataFrame, points: gpd.GeoDataFrame, provenance: Provenance
) -> None:
    """The GeoPackage: layers ``presence`` and ``survey_next`` with their default styles."""
    try:
        # GeoPackages stamp the write time into gpkg_contents; pin it for reproducible bytes
        # (the creation time is in the provenance metadata instead).
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": PINNED_DATE})
        try:
            with atomic_path(path) as tmp:
                _write_gpkg(tmp, polygons, points, provenance)
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    except (pyogrio.errors.DataSourceError, sqlite3.Error) as exc:
        raise OutputError(f"cannot write vectors ({exc})", path) from exc


def _write_gpkg(
    tmp: Path, polygons: gpd.GeoDataFrame, points: gpd.GeoDataFrame, provenance: Provenance
) -> None:
    metadata = provenance.tags()
    pyogrio.write_dataframe(
        polygons,
        tmp,
        driver="GPKG",
        layer="presence",
        promote_to_multi=True,
        geometry_type="MultiPolygon",
        # 1.2: GDAL >= 3.6 writes 1.4 by default, which GDAL 3.6 / QGIS 3.22 warn about.
        dataset_options={"VERSION": "1.2"},
        # Per layer, not per dataset: GDAL writes a .aux.xml sidecar beside a GeoPackage
        # with dataset-level metadata each time it is read.
        layer_metadata=metadata,
    )
    pyogrio.write_dataframe(
        points,
        tmp,
        driver="GPKG",
        layer="survey_next",
        geometry_type="Point",
        layer_metadata=metadata,
    )
    write_layer_styles(
        tmp, {"presence": vector_qml("presence"), "survey_next": vector_qml("survey")}
    )


LAYER_STYLES_DDL = """
CREATE TABLE layer_styles (
  id INTEGER PRIMARY KEY, f_table_catalog TEXT(256), f_table_schema TEXT(256),
  f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
  styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME)
"""


def write_layer_styles(gpkg: Path, styles: dict[str, str]) -> None:
    """QGIS's ``layer_styles`` table (the schema QGIS itself creates), one default style per
    layer, registered in ``gpkg_contents`` as an attributes table so GDAL lists it cleanly.
    """
    with sqlite3.connect(gpkg) as db:
        geometry_columns = dict(
            db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns").fetchall()
        )
        db.execute(LAYER_STYLES_DDL)
        for table, qml in styles.items():
            db.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name,"
                " f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description,"
                " owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', '', ?)",
                (table, geometry_columns[table], table, qml, "spurge default style", PINNED_DATE),
            )
        db.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description,"
            " last_change) VALUES ('layer_styles', 'attributes', 'layer_styles', '', ?)",
            (PINNED_DATE,),
        )
    db.close()
