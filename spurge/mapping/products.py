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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import Point, shape

from spurge.classifier import ModelCard
from spurge.errors import OutputError
from spurge.io.atomic import sha256_file, temporary_sibling
from spurge.mapping.grid import MapGrid
from spurge.mapping.writers import (
    NODATA,
    probability_palette,
    write_cog,
    write_html,
    write_qml,
    write_vectors,
)

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
    uncertainty: np.ndarray  # uint8 entropy % of max, 255 nodata
    polygons: gpd.GeoDataFrame
    points: gpd.GeoDataFrame

    @property
    def transform(self) -> Affine:
        return self.grid.cell_transform

    @property
    def tags(self) -> dict[str, str]:
        return {
            "spurge_model": self.card.backbone,
            "spurge_threshold": str(self.threshold),
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


def presence_polygons(
    prob01: np.ndarray, threshold: float, transform: Any, crs: Any, class_name: str
) -> gpd.GeoDataFrame:
    """Dissolved polygons of 4-connected presence cells with area (m², projected) and mean p."""
    presence = np.nan_to_num(prob01, nan=0.0) >= threshold
    labels, count = ndimage.label(presence)
    rows = []
    if count:
        means = ndimage.mean(np.nan_to_num(prob01), labels, index=np.arange(1, count + 1))
        for geom, value in features.shapes(
            labels.astype(np.int32), mask=presence, transform=transform, connectivity=4
        ):
            rows.append(
                {
                    "class": class_name,
                    "mean_prob": round(float(means[int(value) - 1]), 4),
                    "geometry": shape(geom),
                }
            )
    gdf = gpd.GeoDataFrame(
        rows, columns=["class", "mean_prob", "geometry"], geometry="geometry", crs=crs
    )
    gdf.insert(1, "area_m2", _areas_m2(gdf))
    return gdf


def _areas_m2(gdf: gpd.GeoDataFrame) -> list[float]:
    if not len(gdf):
        return []
    if gdf.crs.is_geographic:
        areas = gdf.to_crs(gdf.estimate_utm_crs()).area
    else:
        areas = gdf.area * gdf.crs.axis_info[0].unit_conversion_factor ** 2
    return [round(float(a), 3) for a in areas]


def survey_next(
    uncertainty: np.ndarray,
    prob01: np.ndarray,
    transform: Any,
    crs: Any,
    n: int,
    min_separation: int,
) -> gpd.GeoDataFrame:
    """The ``n`` most uncertain cells, at least ``min_separation`` cells apart (so the field
    crew visits different places), as points at cell centres named "survey next".
    """
    order = np.lexsort((np.arange(uncertainty.size), -uncertainty.ravel().astype(int)))
    chosen: list[tuple[int, int]] = []
    for flat in order:
        if len(chosen) >= n:
            break
        r, c = divmod(int(flat), uncertainty.shape[1])
        if uncertainty[r, c] == NODATA:
            continue
        if all(max(abs(r - r2), abs(c - c2)) >= min_separation for r2, c2 in chosen):
            chosen.append((r, c))
    rows = []
    for rank, (r, c) in enumerate(chosen, start=1):
        x, y = transform @ (c + 0.5, r + 0.5)
        rows.append(
            {
                "class": "survey next",
                "rank": rank,
                "uncertainty": round(uncertainty[r, c] / 100, 2),
                "mean_prob": round(float(prob01[r, c]), 4),
                "geometry": Point(x, y),
            }
        )
    return gpd.GeoDataFrame(
        rows,
        columns=["class", "rank", "uncertainty", "mean_prob", "geometry"],
        geometry="geometry",
        crs=crs,
    )


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
) -> MapProduct:
    """Blend the merged cell sums and derive presence polygons and survey points."""
    transform = grid.cell_transform
    prob01, prob_pct, classes, uncertainty = blend_outputs(
        sums, weights, card.positive_index, threshold
    )
    polygons = presence_polygons(prob01, threshold, transform, crs, card.positive_class)
    # Survey points at least one window apart, so the crew visits different places.
    span = max(1, grid.window_w // grid.stride_x, grid.window_h // grid.stride_y)
    points = survey_next(uncertainty, prob01, transform, crs, survey_points, span)
    return MapProduct(
        name, card, grid, crs, threshold, blend, prob01, prob_pct, classes, uncertainty,
        polygons, points,
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
        description=f"P({card.positive_class}) %", tags=p.tags,
    )  # fmt: skip
    class_tags = {**p.tags, **{f"class_{i}": n for i, n in enumerate(card.class_names)}}
    write_cog(
        paths["presence"], p.classes, p.transform, p.crs, description="class index",
        tags=class_tags, overview_resampling="mode",
    )  # fmt: skip
    write_cog(
        paths["uncertainty"], p.uncertainty, p.transform, p.crs,
        description="entropy of blended prediction, % of max", tags=p.tags,
        overview_resampling="average",
    )  # fmt: skip


def _write_vectors(p: MapProduct, geojson: Path | None, gpkg: Path | None) -> None:
    """``write_vectors`` makes both files; the one not asked for goes to a scratch name."""
    folder = (geojson or gpkg).parent  # type: ignore[union-attr]
    scratch = [
        temporary_sibling(folder / f"{p.name}{suffix}")
        for suffix, given in ((".geojson", geojson), (".gpkg", gpkg))
        if given is None
    ]
    try:
        write_vectors(geojson or scratch[0], gpkg or scratch[-1], p.polygons, p.points)
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)


@register_writer(
    "geojson",
    {"geojson": ".geojson"},
    "GeoJSON (WGS84): presence polygons and 'survey next' points",
)
def _write_geojson(p: MapProduct, paths: dict[str, Path]) -> None:
    _write_vectors(p, paths["geojson"], None)


@register_writer(
    "gpkg",
    {"gpkg": ".gpkg"},
    "GeoPackage (ortho's CRS): layers presence and survey_next",
)
def _write_gpkg(p: MapProduct, paths: dict[str, Path]) -> None:
    _write_vectors(p, None, paths["gpkg"])


@register_writer(
    "qml", {"qml": "_prob.qml"}, "QGIS style of the probability raster (applied on loading)"
)
def _write_qml(p: MapProduct, paths: dict[str, Path]) -> None:
    # Named after the raster it styles: QGIS applies <raster>.qml by itself on loading.
    write_qml(paths["qml"], f"{p.name}: P({p.card.positive_class})", p.threshold)


@register_writer("html", {"html": ".html"}, "self-contained offline map page")
def _write_html(p: MapProduct, paths: dict[str, Path]) -> None:
    write_html(
        paths["html"], f"spurge map: {p.name}", p.prob_pct, p.transform, p.crs, p.polygons,
        p.points, p.threshold,
    )  # fmt: skip


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
    except OSError as exc:
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise OutputError(f"cannot write ({reason})", path) from exc
