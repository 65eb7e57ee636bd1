"""``<name>_survey.gpx``: the "survey next" points as GPX 1.1 waypoints for field devices.

GPX is what QField, Avenza Maps, Gaia GPS and Garmin handhelds all import. Each point is a
``<wpt>`` named ``spurge-01``, ``spurge-02``, ... (rank order; Garmin units show names up to
about 14 characters, so names stay short), with rank, probability and uncertainty in
``<desc>`` and what to record there in ``<cmt>``. Written by hand, not by GDAL's GPX
driver, which drops non-GPX fields and names: the file is small, deterministic and checked
by reading it back with GDAL/OGR in the tests.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import geopandas as gpd

from spurge.io.atomic import write_text_atomic
from spurge.mapping.provenance import Provenance

#: What the crew records at a survey point (also shown in the page's popups).
RECORD_AT_POINT = (
    "Record: is {species} present within 1 m of this point (yes/no), its cover "
    "(%), and a photo looking down; note the waypoint name."
)


def waypoint_name(rank: int) -> str:
    return f"spurge-{rank:02d}"


def point_description(
    rank: int, total: int, prob_pct: float, uncertainty_pct: float, positive: str
) -> str:
    return (
        f"rank {rank} of {total}: P({positive}) {prob_pct:.2f} %, "
        f"uncertainty {uncertainty_pct:.2f} %"
    )


def write_gpx(path: Path, points: gpd.GeoDataFrame, provenance: Provenance) -> None:
    """Write the survey points (any CRS; converted to WGS84) as named GPX waypoints."""
    wgs84 = points.to_crs("EPSG:4326")
    record = RECORD_AT_POINT.format(species=provenance.species)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<gpx version="1.1" creator="spurge" xmlns="http://www.topografix.com/GPX/1/1">',
        "  <metadata>",
        f"    <name>{escape(provenance.ortho_name)}: survey next</name>",
        f"    <desc>{escape(provenance.describe())}</desc>",
        f"    <time>{provenance.created}</time>",
        "  </metadata>",
    ]
    total = len(wgs84)
    for row in wgs84.itertuples():
        lines += [
            f"  <wpt lat={quoteattr(f'{row.geometry.y:.8f}')}"
            f" lon={quoteattr(f'{row.geometry.x:.8f}')}>",
            f"    <name>{escape(row.name)}</name>",
            f"    <cmt>{escape(record)}</cmt>",
            "    <desc>"
            + escape(
                point_description(
                    int(row.rank),
                    total,
                    float(row.prob_pct),
                    float(row.uncertainty_pct),
                    provenance.positive_class,
                )
            )
            + "</desc>",
            "    <sym>Flag, Blue</sym>",
            "    <type>survey next</type>",
            "  </wpt>",
        ]
    lines.append("</gpx>")
    write_text_atomic(path, "\n".join(lines) + "\n")
