"""Map writers: Cloud-Optimized GeoTIFF, GeoJSON/GeoPackage, QGIS style and a folium page.

Every file is written under a temporary sibling name and renamed when complete, and every
writer is deterministic (GeoPackage timestamps and folium element ids are pinned) so a
resumed or distributed run gives the same bytes as a straight single-process one.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from string import Template
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from affine import Affine
from matplotlib import colormaps
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from spurge.errors import OutputError
from spurge.io.atomic import atomic_path, write_text_atomic
from spurge.resources import PROBABILITY_QML

NODATA = 255
#: Colour ramp shared by the COG colour table, the QGIS style and the HTML legend.
RAMP = "YlOrRd"
#: Largest side (px) of the Web-Mercator overlay embedded in the HTML page.
MAX_OVERLAY_PX = 2048


def probability_palette() -> dict[int, tuple[int, int, int, int]]:
    """Colour table for 0-100 % (YlOrRd) with 255 = nodata fully transparent."""
    cmap = colormaps[RAMP]
    palette = {}
    for value in range(101):
        r, g, b, _ = cmap(value / 100)
        palette[value] = (round(r * 255), round(g * 255), round(b * 255), 255)
    palette[NODATA] = (0, 0, 0, 0)
    return palette


def _hex(rgba: tuple[int, int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def _cog_blocksize(width: int, height: int) -> int:
    """Internal tile size: 512 for big maps, smaller for small ones so overviews still exist."""
    side = max(width, height)
    return int(min(512, max(16, 2 ** math.floor(math.log2(max(side, 2) / 2)))))


def write_cog(
    path: Path,
    data: np.ndarray,
    transform: Affine,
    crs: CRS,
    *,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    overview_resampling: str = "nearest",
) -> None:
    """Write a single-band uint8 array as a DEFLATE Cloud-Optimized GeoTIFF with overviews.

    The array is a map of cells (ortho pixels / stride**2), never the ortho itself.
    """
    height, width = data.shape
    blocksize = _cog_blocksize(width, height)
    levels = (
        max(1, math.ceil(math.log2(max(width, height) / blocksize)))
        if max(width, height) > 1
        else 0
    )
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
    cog = cog_profiles.get("deflate")
    cog.update(blockxsize=blocksize, blockysize=blocksize, predictor=2)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as mem:
            mem.write(data, 1)
            if colormap is not None:
                mem.write_colormap(1, colormap)
            if description:
                mem.set_band_description(1, description)
            if tags:
                mem.update_tags(**tags)
        with memfile.open() as src, atomic_path(path) as tmp:
            cog_translate(
                src,
                tmp,
                cog,
                nodata=NODATA,
                overview_level=levels,
                overview_resampling=overview_resampling,
                quiet=True,
                in_memory=True,
                colormap=colormap,
                forward_band_tags=True,
                config={"GDAL_NUM_THREADS": "1", "GDAL_TIFF_INTERNAL_MASK": "TRUE"},
            )


def write_vectors(
    geojson_path: Path, gpkg_path: Path, polygons: gpd.GeoDataFrame, points: gpd.GeoDataFrame
) -> None:
    """GeoJSON (RFC 7946: WGS84, right-hand rule, both kinds of feature in one collection)
    and GeoPackage in the native CRS (layers ``presence`` and ``survey_next``).
    """
    combined = gpd.GeoDataFrame(
        _concat(polygons, points), geometry="geometry", crs=polygons.crs
    ).to_crs("EPSG:4326")
    try:
        with atomic_path(geojson_path) as tmp:
            # GDAL's RFC7946 mode writes lon/lat WGS84 with counter-clockwise exterior rings.
            pyogrio.write_dataframe(
                combined,
                tmp,
                driver="GeoJSON",
                layer=geojson_path.stem,
                RFC7946="YES",
                WRITE_NAME="NO",
            )
        # GeoPackages stamp the write time into gpkg_contents; pin it for reproducible bytes.
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
        try:
            with atomic_path(gpkg_path) as tmp:
                pyogrio.write_dataframe(
                    polygons,
                    tmp,
                    driver="GPKG",
                    layer="presence",
                    promote_to_multi=True,
                    geometry_type="MultiPolygon",
                )
                pyogrio.write_dataframe(
                    points,
                    tmp,
                    driver="GPKG",
                    layer="survey_next",
                    geometry_type="Point",
                    append=False,
                )
        finally:
            pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    except pyogrio.errors.DataSourceError as exc:
        raise OutputError(f"cannot write vectors ({exc})", gpkg_path) from exc


def _concat(*frames: gpd.GeoDataFrame) -> Any:
    import pandas as pd

    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0].iloc[0:0]
    return pd.concat(non_empty, ignore_index=True)


def write_qml(path: Path, title: str, threshold: float) -> None:
    """QGIS style for the probability raster, from ``spurge/resources/qgis/probability.qml``."""
    template_path = PROBABILITY_QML
    if not template_path.is_file():
        raise OutputError("QGIS style template missing from the installation", template_path)
    palette = probability_palette()
    items = "\n".join(
        f'          <item alpha="255" value="{v}" label="{v} %" color="{_hex(palette[v])}"/>'
        for v in range(0, 101, 10)
    )
    text = Template(template_path.read_text(encoding="utf-8")).substitute(
        items=items,
        title=html.escape(title, quote=True),
        threshold=f"{round(threshold * 100)}",
    )
    write_text_atomic(path, text)


def overlay_png(
    prob: np.ndarray, transform: Affine, crs: CRS
) -> tuple[bytes, tuple[tuple[float, float], tuple[float, float]]]:
    """Warp the probability grid to Web Mercator (what Leaflet stretches image overlays in)
    and colour it; returns PNG bytes and the lat/lon bounds ``((south, west), (north, east))``.
    """
    height, width = prob.shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    dst_crs = CRS.from_epsg(3857)
    dst_transform, dst_w, dst_h = calculate_default_transform(
        crs, dst_crs, width, height, left=left, bottom=bottom, right=right, top=top
    )
    scale = max(dst_w, dst_h) / MAX_OVERLAY_PX
    if scale > 1:
        dst_w, dst_h = max(1, round(dst_w / scale)), max(1, round(dst_h / scale))
        dst_transform = dst_transform @ Affine.scale(scale)
    warped = np.full((dst_h, dst_w), NODATA, dtype=np.uint8)
    reproject(
        prob,
        warped,
        src_transform=transform,
        src_crs=crs,
        src_nodata=NODATA,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=NODATA,
        resampling=Resampling.nearest,
    )
    palette = probability_palette()
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, rgba in palette.items():
        # Low probabilities are see-through so the basemap (or the blank page) shows.
        alpha = 0 if value == NODATA else int(80 + 1.5 * value)
        lut[value] = (*rgba[:3], alpha)
    buffer = io.BytesIO()
    Image.fromarray(lut[warped], mode="RGBA").save(buffer, format="PNG", optimize=False)
    w, s, e, n = transform_bounds(
        dst_crs, "EPSG:4326", *rasterio.transform.array_bounds(dst_h, dst_w, dst_transform)
    )
    return buffer.getvalue(), ((s, w), (n, e))


def _legend_html(threshold: float) -> str:
    palette = probability_palette()
    stops = ", ".join(f"{_hex(palette[v])} {v}%" for v in range(0, 101, 10))
    return (
        '<div id="spurge-legend" style="position: fixed; bottom: 24px; left: 12px; z-index: 9999;'
        " background: rgba(255,255,255,0.9); padding: 8px 10px; border-radius: 4px;"
        ' font: 12px sans-serif; box-shadow: 0 0 4px rgba(0,0,0,0.4);">'
        "<b>Presence probability</b>"
        f'<div style="width: 180px; height: 12px; margin: 4px 0; background: linear-gradient('
        f'to right, {stops});"></div>'
        '<div style="display: flex; justify-content: space-between; width: 180px;">'
        "<span>0 %</span><span>50 %</span><span>100 %</span></div>"
        f'<div style="margin-top: 4px;"><span style="display: inline-block; width: 12px;'
        f' height: 12px; border: 2px solid #0044ff; vertical-align: middle;"></span>'
        f" presence &ge; {round(threshold * 100)} %</div>"
        '<div><span style="display: inline-block; width: 10px; height: 10px;'
        " border-radius: 50%; background: #00c0ff; border: 1px solid #003;"
        ' vertical-align: middle;"></span> survey next (most uncertain)</div></div>'
    )


def write_html(
    path: Path,
    title: str,
    prob: np.ndarray,
    transform: Affine,
    crs: CRS,
    polygons: gpd.GeoDataFrame,
    points: gpd.GeoDataFrame,
    threshold: float,
) -> None:
    """A self-contained folium page (Leaflet and plugins inlined by ``folium-offline``)."""
    import offlinefolium as folium
    from branca.element import Element

    png, bounds = overlay_png(prob, transform, crs)
    centre = ((bounds[0][0] + bounds[1][0]) / 2, (bounds[0][1] + bounds[1][1]) / 2)
    fmap = folium.Map(location=centre, zoom_start=18, tiles=None, control_scale=True)
    # Basemaps are ordinary tile URLs: online they show, offline they simply stay blank.
    folium.TileLayer("OpenStreetMap", name="OpenStreetMap", max_zoom=22, max_native_zoom=19).add_to(
        fmap
    )
    folium.TileLayer(
        tiles="https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/"
        "tile/{z}/{y}/{x}",
        attr="Esri World Imagery",
        name="Satellite (Esri)",
        max_zoom=22,
        max_native_zoom=19,
        show=False,
    ).add_to(fmap)
    folium.raster_layers.ImageOverlay(
        image="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        bounds=[list(bounds[0]), list(bounds[1])],
        name="Presence probability",
        interactive=False,
        zindex=2,
    ).add_to(fmap)
    if len(polygons):
        folium.GeoJson(
            polygons.to_crs("EPSG:4326").__geo_interface__,
            name="Presence polygons",
            style_function=lambda _: {"color": "#0044ff", "weight": 2, "fillOpacity": 0.05},
            popup=folium.GeoJsonPopup(
                fields=["class", "area_m2", "mean_prob"],
                aliases=["class", "area (m²)", "mean probability"],
            ),
        ).add_to(fmap)
    else:
        folium.FeatureGroup(name="Presence polygons (none above the threshold)").add_to(fmap)
    group = folium.FeatureGroup(name="Survey next (most uncertain)")
    for row in points.to_crs("EPSG:4326").itertuples():
        folium.CircleMarker(
            location=(row.geometry.y, row.geometry.x),
            radius=6,
            color="#003",
            fill=True,
            fill_color="#00c0ff",
            fill_opacity=0.9,
            weight=1,
            popup=folium.Popup(
                f"<b>survey next #{row.rank}</b><br>probability {row.mean_prob:.2f}"
                f"<br>uncertainty {row.uncertainty:.2f}",
                max_width=200,
            ),
        ).add_to(group)
    group.add_to(fmap)
    folium.LayerControl(collapsed=False).add_to(fmap)
    fmap.fit_bounds([list(bounds[0]), list(bounds[1])])
    root = fmap.get_root()
    root.html.add_child(Element(_legend_html(threshold)))
    root.header.add_child(Element(f"<title>{html.escape(title)}</title>"))
    _pin_ids(fmap)
    write_text_atomic(path, root.render())


def _pin_ids(element: Any) -> None:
    """Replace folium's random element ids with a counter so the page is reproducible.

    Parents also key their children by name (and templates render those keys), so the
    keys are renamed along with the ids.
    """
    root = element.get_root()
    nodes: list[Any] = []
    for node in [root, *_walk(root)]:
        if all(node is not seen for seen in nodes):
            nodes.append(node)
    old_names = {}
    for count, node in enumerate(nodes, start=1):
        old_names[id(node)] = node.get_name()
        node._id = f"{count:032x}"
    for node in nodes:
        node._children = type(node._children)(
            (child.get_name() if key == old_names.get(id(child)) else key, child)
            for key, child in node._children.items()
        )


def _walk(element: Any) -> list[Any]:
    """Every element below ``element``: children, and the header/html/script parts that
    popups and figures keep outside their children.
    """
    nodes = []
    parts = [getattr(element, name, None) for name in ("header", "html", "script")]
    for child in [*element._children.values(), *(p for p in parts if hasattr(p, "_children"))]:
        nodes.append(child)
        nodes.extend(_walk(child))
    return nodes
