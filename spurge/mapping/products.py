"""From blended cell sums to the files of a map: the ``WRITERS`` registry and one transaction.

:func:`make_product` turns the merged cell sums into the arrays and vectors every output is
drawn from (:class:`MapProduct`). :data:`WRITERS` maps an output name (what ``spurge map
--outputs`` takes) to a :class:`Writer`: the files it makes (key -> file-name suffix) and a
function that writes them, given the product and one path per file. A new output is one
:func:`register_writer` call; the writers themselves live in :mod:`spurge.mapping.writers`.

:func:`write_products` writes all of a map's outputs as temporaries and renames them into
place together at the end, the record ``<name>.map.json`` last; if any write or rename fails,
every temporary and every file already renamed is removed, so a failed map leaves nothing
under a final name, and an ``OSError`` (a full disk) becomes a one-line error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio.crs import CRS

from spurge.classifier import ModelCard
from spurge.errors import OutputError, SpurgeError
from spurge.io.atomic import sha256_file, temporary_sibling
from spurge.mapping.gpx import write_gpx
from spurge.mapping.grid import MapGrid
from spurge.mapping.page import OrthoSource, write_html
from spurge.mapping.provenance import Provenance
from spurge.mapping.styles import NODATA, probability_palette, write_raster_styles
from spurge.mapping.vectors import (
    normalized_entropy,
    presence_polygons,
    survey_next,
    write_geojson,
    write_gpkg,
)
from spurge.mapping.writers import write_cog

RECORD_SUFFIX = ".map.json"


@dataclass(frozen=True)
class MapProduct:
    """Everything the outputs of one map are drawn from (cell grid = ``grid.cell_transform``)."""

    name: str
    card: ModelCard
    grid: MapGrid
    crs: CRS
    threshold: float
    blend: str
    prob01: np.ndarray  # float P(positive), NaN where no valid window
    prob_pct: np.ndarray  # uint8 0-100, 255 nodata
    classes: np.ndarray  # uint8 class index, 255 nodata
    uncertainty01: np.ndarray  # float entropy / log C, NaN where no valid window
    uncertainty: np.ndarray  # uint8 entropy % of max, 255 nodata
    polygons: gpd.GeoDataFrame
    points: gpd.GeoDataFrame
    provenance: Provenance
    ortho: OrthoSource
    #: What the user should hear about the outputs (e.g. the page shows a shrunk ortho).
    notes: list[str] = field(default_factory=list)

    @property
    def transform(self) -> Affine:
        return self.grid.cell_transform

    @property
    def threshold_pct(self) -> int:
        return round(self.threshold * 100)

    @property
    def tags(self) -> dict[str, str]:
        """TIFF tags: provenance, the threshold in % (the unit users see) and how it was made."""
        return {
            **self.provenance.tags(),
            "spurge_threshold_pct": str(self.threshold_pct),
            "spurge_model": self.card.backbone,
            "spurge_blend": self.blend,
        }


WriteFn = Callable[[MapProduct, dict[str, Path]], None]


@dataclass(frozen=True)
class Writer:
    """One ``--outputs`` choice: the files it makes (key -> suffix after the ortho's stem)."""

    name: str
    files: dict[str, str]
    write: WriteFn
    help: str


#: Output name -> writer, in the order outputs are written (and listed in ``--help``).
WRITERS: dict[str, Writer] = {}


def register_writer(name: str, files: dict[str, str], help: str) -> Callable[[WriteFn], WriteFn]:
    """Decorator: register ``write(product, paths)`` as the output ``name``."""

    def decorator(write: WriteFn) -> WriteFn:
        WRITERS[name] = Writer(name, dict(files), write, help)
        return write

    return decorator


def output_paths(
    out_dir: Path, name: str, writer_names: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """Final path of every file the chosen writers make, plus ``record``."""
    names = writer_names if writer_names is not None else tuple(WRITERS)
    paths = {
        key: out_dir / f"{name}{suffix}"
        for writer in names
        for key, suffix in WRITERS[writer].files.items()
    }
    paths["record"] = out_dir / f"{name}{RECORD_SUFFIX}"
    return paths


# ---------------------------------------------------------------------------------------------
# The product
# ---------------------------------------------------------------------------------------------


def blend_outputs(
    sums: np.ndarray, weights: np.ndarray, positive: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blended probabilities -> (prob01 float, prob % uint8, class uint8, uncertainty % uint8).

    A cell is the positive class when its blended probability reaches ``threshold``, else the
    most probable other class. Uncertainty is the entropy of the blended class distribution,
    as a percentage of its maximum (log C). Cells no valid window covered are 255 everywhere.
    """
    valid = weights > 0
    probs = np.zeros_like(sums)
    np.divide(sums, weights[None], out=probs, where=valid[None])
    p_pos = probs[positive]
    prob_pct = np.where(valid, np.clip(np.rint(p_pos * 100), 0, 100), NODATA).astype(np.uint8)
    others = probs.copy()
    others[positive] = -1
    classes = np.where(p_pos >= threshold, positive, np.argmax(others, axis=0))
    classes = np.where(valid, classes, NODATA).astype(np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=0)
    entropy /= np.log(len(sums))
    uncertainty = np.where(valid, np.clip(np.rint(entropy * 100), 0, 100), NODATA).astype(np.uint8)
    return np.where(valid, p_pos, np.nan), prob_pct, classes, uncertainty


def make_product(
    name: str,
    card: ModelCard,
    grid: MapGrid,
    crs: CRS,
    sums: np.ndarray,
    weights: np.ndarray,
    *,
    threshold: float,
    blend: str,
    survey_points: int,
    provenance: Provenance,
    ortho: OrthoSource,
) -> MapProduct:
    """Blend the merged cell sums and derive presence polygons and survey points.

    Survey points are ranked on the exact (unrounded) uncertainty, at least one window apart
    so the crew visits different places.
    """
    transform = grid.cell_transform
    prob01, prob_pct, classes, uncertainty = blend_outputs(
        sums, weights, card.positive_index, threshold
    )
    uncertainty01 = normalized_entropy(sums, weights)
    polygons = presence_polygons(prob01, threshold, transform, crs, card.positive_class)
    span = max(1, grid.window_w // grid.stride_x, grid.window_h // grid.stride_y)
    points = survey_next(uncertainty01, prob01, transform, crs, survey_points, span)
    return MapProduct(
        name, card, grid, crs, threshold, blend, prob01, prob_pct, classes, uncertainty01,
        uncertainty, polygons, points, provenance, ortho,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The writers
# ---------------------------------------------------------------------------------------------


@register_writer(
    "cog",
    {"prob": "_prob.tif", "presence": "_presence.tif", "uncertainty": "_uncertainty.tif"},
    "Cloud-Optimized GeoTIFFs: probability %, class index, uncertainty %",
)
def _write_cogs(p: MapProduct, paths: dict[str, Path]) -> None:
    card = p.card
    write_cog(
        paths["prob"], p.prob_pct, p.transform, p.crs, colormap=probability_palette(),
        description=f"probability of {card.positive_class} (%)", unit="%", tags=p.tags,
    )  # fmt: skip
    class_tags = {**p.tags, **{f"class_{i}": n for i, n in enumerate(card.class_names)}}
    write_cog(
        paths["presence"], p.classes, p.transform, p.crs,
        description=f"class index ({', '.join(card.class_names)})", tags=class_tags,
        overview_resampling="mode",
    )  # fmt: skip
    write_cog(
        paths["uncertainty"], p.uncertainty, p.transform, p.crs,
        description="uncertainty: class entropy (% of maximum)", unit="%", tags=p.tags,
        overview_resampling="average",
    )  # fmt: skip


@register_writer(
    "qml",
    {"qml": "_prob.qml", "qml_presence": "_presence.qml", "qml_uncertainty": "_uncertainty.qml"},
    "QGIS styles of the three rasters (each named after its raster: applied on loading)",
)
def _write_qml(p: MapProduct, paths: dict[str, Path]) -> None:
    write_raster_styles(
        paths, p.name, p.threshold_pct, list(p.card.class_names), p.card.positive_index
    )


@register_writer(
    "gpkg",
    {"gpkg": ".gpkg"},
    "GeoPackage 1.2 (ortho's CRS), styled layers presence and survey_next",
)
def _write_gpkg(p: MapProduct, paths: dict[str, Path]) -> None:
    write_gpkg(paths["gpkg"], p.polygons, p.points, p.provenance)


@register_writer(
    "geojson",
    {"geojson_presence": "_presence.geojson", "geojson_survey": "_survey.geojson"},
    "GeoJSON (WGS84): presence polygons and 'survey next' points, one file each",
)
def _write_geojson(p: MapProduct, paths: dict[str, Path]) -> None:
    write_geojson(paths["geojson_presence"], p.polygons, p.provenance)
    write_geojson(paths["geojson_survey"], p.points, p.provenance)


@register_writer(
    "gpx",
    {"gpx": "_survey.gpx"},
    "GPX waypoints spurge-01... of the 'survey next' points (QField, Avenza, Gaia, Garmin)",
)
def _write_gpx(p: MapProduct, paths: dict[str, Path]) -> None:
    write_gpx(paths["gpx"], p.points, p.provenance)


@register_writer("html", {"html": ".html"}, "self-contained offline page over the orthomosaic")
def _write_html(p: MapProduct, paths: dict[str, Path]) -> None:
    page = write_html(
        paths["html"], f"spurge map: {p.provenance.ortho_name}", p.prob_pct, p.transform,
        p.crs, p.polygons, p.points, p.threshold_pct, p.provenance, p.ortho,
    )  # fmt: skip
    p.notes.extend(page.notes)


# ---------------------------------------------------------------------------------------------
# The transaction
# ---------------------------------------------------------------------------------------------


def write_products(
    product: MapProduct,
    paths: dict[str, Path],
    writer_names: tuple[str, ...],
    record: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Write every chosen output and the record, all or nothing.

    ``record(outputs)`` builds the record's content from ``{key: {path, sha256}}`` of the
    outputs; it is written last, so its presence marks a complete map.
    """
    temporaries: dict[str, Path] = {}
    renamed: list[Path] = []
    try:
        for name in writer_names:
            files = {key: paths[key] for key in WRITERS[name].files}
            temps = _Tracked({key: temporary_sibling(final) for key, final in files.items()})
            temporaries.update(temps)
            try:
                WRITERS[name].write(product, temps)
            except OSError as exc:  # name the file being written: the last one looked up
                with _naming(files[temps.last or next(iter(files))]):
                    raise exc
        outputs = {
            key: {"path": paths[key].name, "sha256": sha256_file(tmp)}
            for key, tmp in temporaries.items()
        }
        temporaries["record"] = temporary_sibling(paths["record"])
        with _naming(paths["record"]):
            text = json.dumps(record(outputs), indent=2, sort_keys=True)
            temporaries["record"].write_text(text, encoding="utf-8")
        for key, tmp in temporaries.items():  # the record last (dicts keep insertion order)
            with _naming(paths[key]):
                os.replace(tmp, paths[key])
            renamed.append(paths[key])
    except BaseException:
        for path in [*temporaries.values(), *renamed]:
            path.unlink(missing_ok=True)
        raise


class _Tracked(dict):
    """Paths of one writer's files, remembering which was looked up last."""

    last: str | None = None

    def __getitem__(self, key: str) -> Path:
        self.last = key
        return super().__getitem__(key)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` (no space left, quota, I/O error) into an error naming ``path``."""
    try:
        yield
    except SpurgeError:
        raise
    except OSError as exc:
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise OutputError(f"cannot write ({reason})", path) from exc
