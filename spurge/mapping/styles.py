"""Colours and styles of the map products: one definition for the COG colour table, the
QGIS styles (.qml beside the rasters, ``layer_styles`` inside the GeoPackage) and the page.

The probability ramp is YlOrRd sampled at 11 stops (0, 10, ..., 100 %) and interpolated
linearly between them, with an alpha ramp that makes low probabilities see-through so the
orthomosaic below shows: 0 % is fully transparent, 10 % is 25 % opaque and 100 % is 85 %
opaque. QGIS interpolates the same stops the same way, so the page, its legend and a QGIS
render show one colour for one value.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

import numpy as np
from matplotlib import colormaps

from spurge.errors import OutputError
from spurge.io.atomic import write_text_atomic
from spurge.resources import QGIS_TEMPLATE_DIR

NODATA = 255
TEMPLATE_DIR = QGIS_TEMPLATE_DIR
#: Colour ramp shared by the COG colour table, the QGIS style and the HTML legend.
RAMP = "YlOrRd"
STOPS = tuple(range(0, 101, 10))
#: Outline colour of presence polygons (page and GeoPackage style) and survey point fill.
POLYGON_RGB = (0x00, 0x44, 0xFF)
SURVEY_RGB = (0x00, 0xC0, 0xFF)


def stop_alpha(value: int) -> int:
    """Opacity (0-255) of the probability ramp at a stop: 0 at 0 %, 25 %..85 % from 10 %."""
    if value <= 0:
        return 0
    return round(255 * (0.25 + 0.6 * (max(value, 10) - 10) / 90))


def ramp_stops() -> list[tuple[int, tuple[int, int, int, int]]]:
    """The 11 (value %, RGBA) stops every consumer interpolates between."""
    cmap = colormaps[RAMP]
    stops = []
    for value in STOPS:
        r, g, b, _ = cmap(value / 100)
        stops.append((value, (round(r * 255), round(g * 255), round(b * 255), stop_alpha(value))))
    return stops


def overlay_lut() -> np.ndarray:
    """(256, 4) uint8 RGBA for every byte value: 0-100 % interpolated, others transparent."""
    stops = ramp_stops()
    xs = np.array([v for v, _ in stops], dtype=float)
    lut = np.zeros((256, 4), dtype=np.uint8)
    values = np.arange(101, dtype=float)
    for channel in range(4):
        ys = np.array([rgba[channel] for _, rgba in stops], dtype=float)
        lut[:101, channel] = np.rint(np.interp(values, xs, ys)).astype(np.uint8)
    return lut


def probability_palette() -> dict[int, tuple[int, int, int, int]]:
    """Colour table of the probability COG: the ramp opaque, 255 = nodata transparent.

    A GeoTIFF colour table is what plain viewers show; the see-through ramp is the styles'.
    """
    lut = overlay_lut()
    palette = {v: (int(lut[v, 0]), int(lut[v, 1]), int(lut[v, 2]), 255) for v in range(101)}
    palette[NODATA] = (0, 0, 0, 0)
    return palette


def hex_colour(rgb: tuple[int, ...]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def _template(name: str) -> Template:
    path = TEMPLATE_DIR / name
    if not path.is_file():
        raise OutputError("QGIS style template missing from the installation", path)
    return Template(path.read_text(encoding="utf-8"))


def _item(value: int, rgba: tuple[int, ...], label: str) -> str:
    return (
        f'          <item alpha="{rgba[3]}" value="{value}" label="{html.escape(label)}"'
        f' color="{hex_colour(rgba)}"/>'
    )


def probability_qml(title: str, threshold_pct: int) -> str:
    """QGIS style of ``<name>_prob.tif``: the interpolated, see-through ramp."""
    items = "\n".join(_item(v, rgba, f"{v} %") for v, rgba in ramp_stops())
    return _template("probability.qml").substitute(
        items=items,
        title=html.escape(title, quote=True),
        threshold=str(threshold_pct),
        minimum="0",
        maximum="100",
        unit="%",
    )


def uncertainty_qml(title: str) -> str:
    """QGIS style of ``<name>_uncertainty.tif``: transparent (certain) to purple (unsure)."""
    stops = [(0, (255, 255, 255, 0)), (50, (158, 154, 200, 140)), (100, (84, 39, 143, 220))]
    items = "\n".join(_item(v, rgba, f"{v} %") for v, rgba in stops)
    return _template("probability.qml").substitute(
        items=items,
        title=html.escape(title, quote=True),
        threshold="",
        minimum="0",
        maximum="100",
        unit="%",
    )


def presence_qml(title: str, class_names: list[str], positive: int) -> str:
    """QGIS style of ``<name>_presence.tif``: the positive class red, other classes clear."""
    entries = []
    for index, name in enumerate(class_names):
        rgba = (215, 25, 28, 200) if index == positive else (255, 255, 255, 0)
        entries.append(
            f'        <paletteEntry value="{index}" label="{html.escape(name, quote=True)}"'
            f' alpha="{rgba[3]}" color="{hex_colour(rgba)}"/>'
        )
    return _template("presence.qml").substitute(
        entries="\n".join(entries), title=html.escape(title, quote=True)
    )


def write_raster_styles(
    paths: dict[str, Path],
    title: str,
    threshold_pct: int,
    class_names: list[str],
    positive: int,
) -> None:
    """The three raster styles, each named after its raster so QGIS applies it on loading."""
    write_text_atomic(
        paths["qml"], probability_qml(f"{title}: P({class_names[positive]})", threshold_pct)
    )
    write_text_atomic(paths["qml_presence"], presence_qml(f"{title}: class", class_names, positive))
    write_text_atomic(paths["qml_uncertainty"], uncertainty_qml(f"{title}: uncertainty"))


def vector_qml(kind: str) -> str:
    """QGIS style stored as the default of a GeoPackage layer (``presence`` or ``survey_next``):
    polygons as outlines with no fill, points as cyan circles labelled with their name.
    """
    if kind == "presence":
        return _template("presence_layer.qml").substitute(
            colour="{},{},{},255".format(*POLYGON_RGB)
        )
    return _template("survey_layer.qml").substitute(colour="{},{},{},255".format(*SURVEY_RGB))
