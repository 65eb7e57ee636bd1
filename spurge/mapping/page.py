"""``<name>.html``: the offline field page (folium, every script and style inlined).

What the page shows, all without a network connection:

- **the orthomosaic itself**, visible by default: an inline WebP image (with alpha, so
  nodata is clear) warped to Web Mercator, the projection Leaflet stretches images in.
  Size rule: at most :data:`ORTHO_MAX_PIXELS` (16 Mpx, 4096 x 4096; about 25 cm/px for a
  100 ha site) at quality :data:`ORTHO_QUALITY`, which keeps the page well under 25 MB for
  a 100 ha site. A finer ortho is read shrunk (GDAL overviews when the file has them,
  otherwise a decimated read, so memory stays at the preview's size, never the ortho's) and
  the summary says so;
- **the probability overlay**, warped to Web Mercator with nearest neighbour at
  :func:`cell_oversampling` pixels per cell, so every cell keeps its value and place to
  within 1/16 of a cell; drawn unsmoothed, with the see-through ramp of
  :mod:`spurge.mapping.styles`;
- presence polygons (outlines) and "survey next" points with popups holding their
  coordinates (and, for points, what to record there);
- a legend drawn with the overlay's own colours and transparency, a metric scale bar, a
  "locate me" button (Leaflet.Locate, inlined by folium-offline; uses the device's GPS),
  and a layer list that starts collapsed on phone-sized screens;
- OpenStreetMap and Esri imagery as optional basemaps (they need the internet).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window

from spurge.io.atomic import write_text_atomic
from spurge.io.raster import BandScaling, valid_mask
from spurge.mapping.gpx import RECORD_AT_POINT
from spurge.mapping.provenance import Provenance
from spurge.mapping.styles import (
    NODATA,
    POLYGON_RGB,
    SURVEY_RGB,
    hex_colour,
    overlay_lut,
    ramp_stops,
)

ORTHO_MAX_PIXELS = 4096 * 4096
ORTHO_QUALITY = 80
#: WebP's largest side is 16383 px; leave room for the warp's margins.
WEBP_MAX_SIDE = 16000
#: Largest side (px) of the Web-Mercator probability overlay.
MAX_OVERLAY_PX = 8192
#: Preferred screen pixels per cell side in the probability overlay image.
CELL_PX = 8
#: Below this screen width (CSS px) the layer list starts collapsed.
PHONE_WIDTH = 700
WEB_MERCATOR = CRS.from_epsg(3857)
Bounds = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class OrthoSource:
    """The orthomosaic to show under the map, read as ``spurge map`` reads it."""

    path: Path
    scaling: dict[str, Any]
    alpha_band: int | None = None


@dataclass
class PageInfo:
    """What writing the page decided: the ortho's shown pixel size and notes for the summary."""

    #: Pixel size of the shown ortho, in the ortho CRS's units.
    ortho_px: float = 0.0
    ortho_shrink: float = 1.0
    notes: list[str] = field(default_factory=list)


def cell_oversampling(rows: int, cols: int) -> int:
    """Image pixels per cell side: :data:`CELL_PX`, fewer only for very large grids."""
    return max(1, min(CELL_PX, MAX_OVERLAY_PX // max(rows, cols, 1)))


def _to_mercator(
    bands: np.ndarray, transform: Affine, crs: CRS, scale: float, fill: int
) -> tuple[np.ndarray, Affine]:
    """Warp (C, H, W) uint8 to Web Mercator, nearest, at ``scale`` x the pixel count per side."""
    count, height, width = bands.shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    edges = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    # Resolution from GDAL's estimate; extent from the densified source edges grown by one
    # pixel, so no source corner falls outside the image.
    estimate, _, _ = calculate_default_transform(
        crs, WEB_MERCATOR, max(1, round(width * scale)), max(1, round(height * scale)), *edges
    )
    res = abs(estimate.a)
    west, south, east, north = transform_bounds(crs, WEB_MERCATOR, *edges, densify_pts=101)
    west, north = math.floor(west / res - 1) * res, math.ceil(north / res + 1) * res
    dst_w = max(1, math.ceil((east - west) / res + 1))
    dst_h = max(1, math.ceil((north - south) / res + 1))
    dst_transform = Affine(res, 0, west, 0, -res, north)
    warped = np.full((count, dst_h, dst_w), fill, dtype=np.uint8)
    reproject(
        bands,
        warped,
        src_transform=transform,
        src_crs=crs,
        src_nodata=fill,
        dst_transform=dst_transform,
        dst_crs=WEB_MERCATOR,
        dst_nodata=fill,
        resampling=Resampling.nearest,
    )
    return warped, dst_transform


def _latlon_bounds(shape: tuple[int, int], transform: Affine) -> Bounds:
    w, s, e, n = transform_bounds(
        WEB_MERCATOR, "EPSG:4326", *rasterio.transform.array_bounds(*shape, transform)
    )
    return (s, w), (n, e)


def overlay_png(prob: np.ndarray, transform: Affine, crs: CRS) -> tuple[bytes, Bounds]:
    """The probability grid coloured with the see-through ramp, warped to Web Mercator at
    :func:`cell_oversampling` px per cell; PNG bytes and ``((south, west), (north, east))``.
    """
    k = cell_oversampling(*prob.shape)
    warped, dst_transform = _to_mercator(prob[None], transform, crs, k, NODATA)
    # A palette PNG (the ramp as palette, its alpha as tRNS): one byte per pixel in memory,
    # where RGBA took four (268 MB at the 8192 px cap); browsers draw the same colours.
    lut = overlay_lut()
    image = Image.fromarray(warped[0], mode="P")
    image.putpalette(lut[:, :3].tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=lut[:, 3].tobytes())
    return buffer.getvalue(), _latlon_bounds(warped.shape[1:], dst_transform)


def ortho_preview(
    source: OrthoSource, max_pixels: int | None = None
) -> tuple[bytes, Bounds, PageInfo]:
    """The ortho as an inline WebP (RGBA) in Web Mercator, shrunk to ``max_pixels``."""
    scaling = BandScaling.from_dict(source.scaling)
    max_pixels = max_pixels or ORTHO_MAX_PIXELS
    with rasterio.open(source.path) as src:
        # WebP images are at most 16383 px a side: a long, thin ortho shrinks for that too.
        shrink = max(
            1.0,
            math.sqrt(src.width * src.height / max_pixels),
            max(src.width, src.height) / WEBP_MAX_SIDE,
        )
        out_h = max(1, math.floor(src.height / shrink))
        out_w = max(1, math.floor(src.width / shrink))
        window = Window(0, 0, src.width, src.height)
        # out_shape makes GDAL use overviews or a decimated read: memory ~ the preview only.
        data = src.read(
            list(scaling.bands), out_shape=(3, out_h, out_w), resampling=Resampling.average
        )
        valid = valid_mask(src, window, scaling.bands, source.alpha_band, data, (out_h, out_w))
        transform = src.transform * Affine.scale(src.width / out_w, src.height / out_h)
        crs = src.crs
        px = abs(src.transform.a) * src.width / out_w
    rgba = np.concatenate([scaling.apply(data), (valid * 255).astype(np.uint8)[None]])
    # Warp with alpha 0 as the fill so outside the ortho stays clear.
    warped, dst_transform = _to_mercator(rgba, transform, crs, 1.0, 0)
    warped[:3, warped[3] == 0] = 0
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(warped.transpose(1, 2, 0)), mode="RGBA")
    image.save(buffer, format="WEBP", quality=ORTHO_QUALITY, method=4)
    info = PageInfo(ortho_px=px, ortho_shrink=shrink)
    if shrink > 1:
        info.notes.append(
            f"the page shows {source.path.name} shrunk {shrink:.1f}x ({out_w}x{out_h} px, "
            f"{max_pixels / 1e6:.0f} Mpx size rule)"
        )
    return buffer.getvalue(), _latlon_bounds(warped.shape[1:], dst_transform), info


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def legend_html(threshold_pct: int, provenance: Provenance) -> str:
    """Legend with the overlay's colours and alpha, placed bottom-right (the scale bar is
    bottom-left and the layer list top-right, so nothing hides anything).
    """
    stops = ", ".join(
        f"rgba({r}, {g}, {b}, {a / 255:.3f}) {v}%" for v, (r, g, b, a) in ramp_stops()
    )
    return (
        '<div id="spurge-legend" style="position: absolute; bottom: 28px; right: 10px;'
        " z-index: 800; background: rgba(255,255,255,0.92); padding: 6px 8px;"
        " border-radius: 4px; font: 12px sans-serif; box-shadow: 0 0 4px rgba(0,0,0,0.4);"
        ' max-width: 46vw;">'
        f"<b>P({html.escape(provenance.positive_class)}), %</b>"
        f'<div id="spurge-legend-ramp" style="width: 160px; max-width: 100%; height: 12px;'
        f' margin: 4px 0; background: linear-gradient(to right, {stops});"></div>'
        '<div style="display: flex; justify-content: space-between; width: 160px;'
        ' max-width: 100%;"><span>0</span><span>50</span><span>100</span></div>'
        '<div style="margin-top: 4px;"><span style="display: inline-block; width: 12px;'
        f' height: 12px; border: 2px solid {hex_colour(POLYGON_RGB)}; vertical-align: middle;">'
        f"</span> presence &ge; {threshold_pct} %</div>"
        '<div><span style="display: inline-block; width: 10px; height: 10px;'
        f" border-radius: 50%; background: {hex_colour(SURVEY_RGB)}; border: 1px solid #003;"
        ' vertical-align: middle;"></span> survey next</div>'
        f'<div style="color: #555; margin-top: 3px;">{html.escape(provenance.species)},'
        f" {html.escape(provenance.ortho_name)}, {html.escape(provenance.created[:10])}</div>"
        "</div>"
    )


def _latlon_text(lat: float, lon: float) -> str:
    return f"{lat:.6f}, {lon:.6f}"


def _add_polygons(fmap: Any, folium: Any, polygons: gpd.GeoDataFrame) -> None:
    if not len(polygons):
        folium.FeatureGroup(name="Presence polygons (none above the threshold)").add_to(fmap)
        return
    wgs84 = polygons.to_crs("EPSG:4326")
    where = polygons.representative_point().to_crs("EPSG:4326")
    wgs84["lat_lon"] = [_latlon_text(p.y, p.x) for p in where]
    folium.GeoJson(
        wgs84.__geo_interface__,
        name="Presence polygons",
        style_function=lambda _: {
            "color": hex_colour(POLYGON_RGB),
            "weight": 2,
            "fill": False,
        },
        popup=folium.GeoJsonPopup(
            fields=["class", "area_m2", "mean_prob_pct", "lat_lon"],
            aliases=["class", "area (m²)", "mean probability (%)", "lat, lon (WGS84)"],
        ),
    ).add_to(fmap)


def _add_points(fmap: Any, folium: Any, points: gpd.GeoDataFrame, provenance: Provenance) -> None:
    group = folium.FeatureGroup(name="Survey next (most uncertain)")
    record = html.escape(RECORD_AT_POINT.format(species=provenance.species))
    for row in points.to_crs("EPSG:4326").itertuples():
        folium.CircleMarker(
            location=(row.geometry.y, row.geometry.x),
            radius=7,
            color="#003",
            fill=True,
            fill_color=hex_colour(SURVEY_RGB),
            fill_opacity=0.9,
            weight=1,
            tooltip=row.name,
            popup=folium.Popup(
                f"<b>{row.name}</b> (survey rank {row.rank})<br>"
                f"P({html.escape(provenance.positive_class)}) {row.prob_pct:.2f} %,"
                f" uncertainty {row.uncertainty_pct:.2f} %<br>"
                f"lat, lon {_latlon_text(row.geometry.y, row.geometry.x)}<br>{record}",
                max_width=260,
            ),
        ).add_to(group)
    group.add_to(fmap)


def _add_basemaps(fmap: Any, folium: Any) -> None:
    # A blank base layer is the default: offline, internet tiles would only fail.
    folium.TileLayer(
        tiles="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
        attr="spurge",
        name="No basemap (offline)",
        max_zoom=24,
    ).add_to(fmap)
    folium.TileLayer(
        "OpenStreetMap",
        name="OpenStreetMap (internet)",
        max_zoom=24,
        max_native_zoom=19,
        show=False,
    ).add_to(fmap)
    folium.TileLayer(
        tiles="https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/"
        "tile/{z}/{y}/{x}",
        attr="Esri World Imagery",
        name="Satellite, Esri (internet)",
        max_zoom=24,
        max_native_zoom=19,
        show=False,
    ).add_to(fmap)


#: The locate button's icon drawn in CSS: Font Awesome's icon font is not inlined.
LOCATE_CSS = (
    "<style>.spurge-locate, .spurge-locate-loading { display: inline-block; width: 10px;"
    " height: 10px; margin-top: 8px; border: 2px solid #333; border-radius: 50%;"
    " box-shadow: 0 0 0 2px #fff, 0 0 0 3px #333; }"
    " .spurge-locate-loading { border-color: #2a81cb; }</style>"
)


def _add_controls(fmap: Any, folium: Any) -> None:
    from branca.element import Element, MacroElement
    from jinja2 import Template
    from offlinefolium.plugins import LocateControl
    from offlinefolium.utilities import JsCode

    # Leaflet.Locate is inlined by folium-offline; Font Awesome's icon font is not, so the
    # button's icon is a plain character.
    LocateControl(
        position="topleft",
        icon="spurge-locate",
        iconLoading="spurge-locate-loading",
        flyTo=False,
        keepCurrentZoomLevel=True,
        strings={"title": "Show my position (device GPS)", "popup": "You are within {distance} m"},
        locateOptions={"enableHighAccuracy": True, "maxZoom": 22},
    ).add_to(fmap)
    fmap.get_root().header.add_child(Element(LOCATE_CSS))
    scale = MacroElement()
    scale._template = Template(
        "{% macro script(this, kwargs) %}L.control.scale({imperial: false, maxWidth: 150})"
        ".addTo({{ this._parent.get_name() }});{% endmacro %}"
    )
    fmap.add_child(scale)
    folium.LayerControl(
        collapsed=JsCode(f"window.matchMedia('(max-width: {PHONE_WIDTH}px)').matches")
    ).add_to(fmap)


def write_html(
    path: Path,
    title: str,
    prob: np.ndarray,
    transform: Affine,
    crs: CRS,
    polygons: gpd.GeoDataFrame,
    points: gpd.GeoDataFrame,
    threshold_pct: int,
    provenance: Provenance,
    ortho: OrthoSource,
) -> PageInfo:
    """Write the self-contained page; returns what it decided (ortho shrink, notes)."""
    import offlinefolium as folium
    from branca.element import Element

    png, bounds = overlay_png(prob, transform, crs)
    webp, ortho_bounds, info = ortho_preview(ortho)
    centre = ((bounds[0][0] + bounds[1][0]) / 2, (bounds[0][1] + bounds[1][1]) / 2)
    fmap = folium.Map(location=centre, zoom_start=18, tiles=None, max_zoom=24, zoom_snap=0.25)
    _add_basemaps(fmap, folium)
    folium.raster_layers.ImageOverlay(
        image=_data_url("image/webp", webp),
        bounds=[list(ortho_bounds[0]), list(ortho_bounds[1])],
        name=f"Orthomosaic ({html.escape(provenance.ortho_name)})",
        interactive=False,
        pixelated=False,
        zindex=1,
    ).add_to(fmap)
    folium.raster_layers.ImageOverlay(
        image=_data_url("image/png", png),
        bounds=[list(bounds[0]), list(bounds[1])],
        name=f"P({html.escape(provenance.positive_class)}) %",
        interactive=False,
        className="spurge-cells",
        zindex=2,
    ).add_to(fmap)
    _add_polygons(fmap, folium, polygons)
    _add_points(fmap, folium, points, provenance)
    _add_controls(fmap, folium)
    fmap.fit_bounds([list(bounds[0]), list(bounds[1])], padding=(16, 16))
    root: Any = fmap.get_root()  # a branca Figure: html, header (untyped)
    root.html.add_child(Element(legend_html(threshold_pct, provenance)))
    root.header.add_child(Element(f"<title>{html.escape(title)}</title>"))
    root.header.add_child(Element("<style>.spurge-cells { image-rendering: pixelated; }</style>"))
    _pin_ids(fmap)
    write_text_atomic(path, root.render())
    return info


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
