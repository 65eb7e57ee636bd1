"""``spurge map``: presence maps over whole orthomosaics, resumable and optionally on Dask.

Per orthomosaic: plan the sliding windows (:mod:`spurge.mapping.grid`), map blocks of windows
(:func:`spurge.mapping.predict.predict_block`, in-process or on a Dask cluster) while saving
each finished block's cell sums under ``<out>/.spurge-map-<name>/`` so an interrupted run
continues where it stopped, then merge the blocks in a fixed order (same bytes whatever ran
them) and write the outputs, each under its final name only once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spurge import __version__
from spurge.classifier import ModelCard, load_model
from spurge.errors import RasterError, SpurgeError
from spurge.io.atomic import (
    atomic_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    sha256_file,
    write_text_atomic,
)
from spurge.io.raster import check_bands, compute_scaling, open_ortho, pixel_size_m
from spurge.mapping.grid import MapGrid, plan_blocks
from spurge.mapping.predict import (
    BlockResult,
    BlockSettings,
    classify_block,
    predict_block,
    read_block,
)
from spurge.mapping.provenance import make_provenance
from spurge.mapping.vectors import normalized_entropy
from spurge.mapping.writers import NODATA, MapArrays, OrthoSource, write_products

CHECKPOINT_PREFIX = ".spurge-map-"
BLENDS = ("mean", "gaussian")
GSD_POLICIES = ("warn", "resample", "refuse")


class GsdWarning(UserWarning):
    """The orthomosaic's GSD is far from the one the model was trained at."""


@dataclass
class OrthoMap:
    """Outputs and counts for one orthomosaic."""

    ortho: Path
    outputs: dict[str, Path]
    grid: MapGrid
    windows: int = 0
    skipped: int = 0
    blocks: int = 0
    resumed_blocks: int = 0
    polygons: int = 0
    presence_area_m2: float = 0.0
    up_to_date: bool = False
    #: Wall time spent on windows (read, classify, blend) and on the whole ortho.
    seconds_windows: float = 0.0
    seconds_total: float = 0.0
    #: Things the user should know about the products (e.g. the page shows a shrunk ortho).
    notes: list[str] = field(default_factory=list)


@dataclass
class MapResult:
    out_dir: Path
    maps: list[OrthoMap] = field(default_factory=list)
    threshold: float = 0.5
    workers: str = "single process"

    def summary(self) -> str:
        parts = []
        for m in self.maps:
            if m.up_to_date:
                parts.append(f"{m.ortho.name}: already mapped with these settings")
                continue
            resumed = (
                f", {m.resumed_blocks} resumed from a previous run" if m.resumed_blocks else ""
            )
            parts.append(
                f"{m.ortho.name}: {m.windows} windows of {m.grid.window_w}x{m.grid.window_h} px "
                f"({m.skipped} skipped as nodata) in {m.blocks} blocks{resumed} -> "
                f"{m.grid.cols}x{m.grid.rows} cells of {m.grid.stride_x}x{m.grid.stride_y} px, "
                f"{m.polygons} presence polygon(s) covering {m.presence_area_m2:.1f} m²"
                + "".join(f" (note: {n})" for n in m.notes)
            )
        return (
            f"Mapped {len(self.maps)} orthomosaic(s) into {self.out_dir} ({self.workers}; "
            f"presence where probability >= {self.threshold:.2f}): " + "; ".join(parts) + ". "
            "Each has <name>_prob.tif (COG, 0-100 %, 255 nodata), <name>_presence.tif, "
            "<name>_uncertainty.tif (0-100 %), each with a QGIS style (.qml, applied on "
            "loading); <name>.gpkg (presence polygons and 'survey next' points, styled), "
            "<name>_presence.geojson, <name>_survey.geojson, <name>_survey.gpx (waypoints "
            "spurge-01...) and <name>.html (offline map over the orthomosaic)."
        )


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {
        "prob": out_dir / f"{name}_prob.tif",
        "presence": out_dir / f"{name}_presence.tif",
        "uncertainty": out_dir / f"{name}_uncertainty.tif",
        "geojson_presence": out_dir / f"{name}_presence.geojson",
        "geojson_survey": out_dir / f"{name}_survey.geojson",
        "gpx": out_dir / f"{name}_survey.gpx",
        "gpkg": out_dir / f"{name}.gpkg",
        # Named after the raster each styles: QGIS applies <raster>.qml by itself on loading.
        "qml": out_dir / f"{name}_prob.qml",
        "qml_presence": out_dir / f"{name}_presence.qml",
        "qml_uncertainty": out_dir / f"{name}_uncertainty.qml",
        "html": out_dir / f"{name}.html",
        "record": out_dir / f"{name}.map.json",
    }


def map_orthos(
    orthos: Sequence[str | Path],
    run_dir: str | Path,
    out_dir: str | Path = "maps",
    stride: int | None = None,
    threshold: float = 0.5,
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    blend: str = "mean",
    batch_size: int = 64,
    block_windows: int = 16,
    survey_points: int = 10,
    gsd_policy: str = "warn",
    gsd_tolerance: float = 1.5,
    processes: bool = True,
    progress: bool | None = None,
) -> MapResult:
    """Map presence over whole orthomosaics with a trained tile classifier.

    Args:
        orthos: orthomosaic paths (GeoTIFF/COG/VRT); output names come from their stems.
        run_dir: run folder with ``model.safetensors`` + ``model.json`` (``spurge train``).
        out_dir: output folder (created).
        stride: window step in ortho pixels; default half a window. One output cell = stride.
        threshold: probability of the positive class at or above which a cell is presence.
        workers: run blocks on a ``dask.distributed.LocalCluster`` of this many workers.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``) instead.
        blend: ``mean`` (every covering window counts the same) or ``gaussian`` (window
            centres count more than edges).
        batch_size: windows per model forward; with the window size it bounds memory.
        block_windows: windows per side of a block (the unit of resuming and of Dask tasks).
        survey_points: how many "survey next" points (most uncertain cells) to write.
        gsd_policy: when the ortho's pixel size is more than ``gsd_tolerance`` times off the
            model's GSD: ``warn`` (and resample), ``resample`` (silently) or ``refuse``.
        processes: LocalCluster workers as processes (True) or threads (False).
        progress: show progress bars (default: when stderr is a terminal).
    """
    if not 0 < threshold < 1:
        raise SpurgeError(f"--threshold must be between 0 and 1, got {threshold}")
    if stride is not None and stride < 1:
        raise SpurgeError(f"--stride must be a positive number of pixels, got {stride}")
    if blend not in BLENDS:
        raise SpurgeError(f"blend must be one of {BLENDS}, got {blend!r}")
    if gsd_policy not in GSD_POLICIES:
        raise SpurgeError(f"gsd policy must be one of {GSD_POLICIES}, got {gsd_policy!r}")
    if workers is not None and scheduler is not None:
        raise SpurgeError("give either --workers or --scheduler, not both")
    if not orthos:
        raise SpurgeError("no orthomosaic given")
    names = [Path(o).stem for o in orthos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpurgeError(
            f"several orthomosaics share the name {duplicates[0]!r}; outputs "
            "would collide, map them into different --out folders"
        )
    if batch_size < 1 or block_windows < 1 or survey_points < 0:
        raise SpurgeError("batch_size and block_windows must be >= 1, survey_points >= 0")
    run_dir = Path(run_dir)
    # Check the model and every orthomosaic before anything is written, so a bad second
    # ortho does not stop the run after the first was mapped.
    _, card = load_model(run_dir)
    plans = [_plan(Path(o), card, stride, gsd_policy, gsd_tolerance) for o in orthos]
    out = ensure_writable_dir(out_dir)
    remove_stale_temporaries(out)
    settings = dict(
        stride=stride,
        threshold=threshold,
        blend=blend,
        batch_size=batch_size,
        block_windows=block_windows,
        survey_points=survey_points,
    )
    result = MapResult(out_dir=out, threshold=threshold)
    client, cluster = _dask_client(workers, scheduler, processes)
    if client is not None:
        result.workers = (
            f"Dask: {scheduler}" if scheduler else f"Dask LocalCluster, {workers} workers"
        )
    try:
        for ortho, plan in zip(orthos, plans, strict=True):
            result.maps.append(
                _map_one(Path(ortho), plan, run_dir, card, out, settings, client, progress)
            )
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return result


def _dask_client(workers: int | None, scheduler: str | None, processes: bool) -> tuple[Any, Any]:
    if workers is None and scheduler is None:
        return None, None
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as exc:
            raise SpurgeError(f"cannot reach the Dask scheduler ({exc})", scheduler) from exc
    if workers < 1:
        raise SpurgeError(f"--workers must be at least 1, got {workers}")
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None
    )
    return Client(cluster), cluster


def _plan(
    ortho: Path, card: ModelCard, stride: int | None, gsd_policy: str, gsd_tolerance: float
) -> tuple[MapGrid, dict[str, Any], Any]:
    config = card.species_config()
    with open_ortho(ortho) as src:
        check_bands(src, config.bands, config.alpha_band, ortho)
        px_x, px_y = pixel_size_m(src)
        ratio = max(px_x, px_y, card.gsd_m) / min(px_x, px_y, card.gsd_m)
        if ratio > gsd_tolerance:
            problem = (
                f"pixel size {px_x:.4g} x {px_y:.4g} m is far from the model's training GSD "
                f"{card.gsd_m:.4g} m (x{ratio:.2g})"
            )
            if gsd_policy == "refuse":
                raise RasterError(problem + "; use --gsd resample to map anyway", ortho)
            if gsd_policy == "warn":
                warnings.warn(
                    f"{ortho}: {problem}; windows are resampled to {card.tile_size_px} px",
                    GsdWarning,
                    stacklevel=3,
                )
        window_w = round(card.tile_size_m / px_x)
        window_h = round(card.tile_size_m / px_y)
        if window_w < 2 or window_h < 2:
            raise RasterError(
                f"pixels of {px_x:.4g} m are too coarse for {card.tile_size_m} m model windows",
                ortho,
            )
        if src.width < window_w or src.height < window_h:
            raise RasterError(
                f"{src.width}x{src.height} px is smaller than one {card.tile_size_m} m model "
                f"window ({window_w}x{window_h} px)",
                ortho,
            )
        stride_x = stride or max(1, window_w // 2)
        stride_y = stride or max(1, window_h // 2)
        if stride_x > window_w or stride_y > window_h:
            raise SpurgeError(
                f"--stride {stride} is larger than a window ({window_w} px): "
                "parts of the ortho would never be seen"
            )
        grid = MapGrid(
            src.width, src.height, window_w, window_h, stride_x, stride_y, tuple(src.transform)[:6]
        )
        scaling = compute_scaling(
            src, config.bands, config.scale_percentiles, config.alpha_band, ortho
        )
        return grid, scaling.to_dict(), src.crs


def _fingerprint(
    ortho: Path, card: ModelCard, grid: MapGrid, scaling: dict[str, Any], settings: dict[str, Any]
) -> str:
    stat = ortho.stat()
    payload = {
        "version": __version__,
        "ortho": str(ortho.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "weights": card.weights_sha256,
        "card": card.model_dump(mode="json", exclude={"training"}),
        "grid": grid.to_dict(),
        "scaling": scaling,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _map_one(
    ortho: Path,
    plan: tuple[MapGrid, dict[str, Any], Any],
    run_dir: Path,
    card: ModelCard,
    out: Path,
    settings: dict[str, Any],
    client: Any,
    progress: bool | None,
) -> OrthoMap:
    start_total = time.perf_counter()
    grid, scaling, crs = plan
    name = ortho.stem
    paths = output_paths(out, name)
    result = OrthoMap(ortho=ortho, outputs=paths, grid=grid)
    fingerprint = _fingerprint(ortho, card, grid, scaling, settings)
    if _up_to_date(paths, fingerprint):
        result.up_to_date = True
        return result

    checkpoint = out / f"{CHECKPOINT_PREFIX}{name}"
    plan_file = checkpoint / "plan.json"
    if checkpoint.exists() and (
        not plan_file.is_file() or json.loads(plan_file.read_text())["fingerprint"] != fingerprint
    ):
        shutil.rmtree(checkpoint)  # a different plan: its blocks cannot be reused
    checkpoint.mkdir(exist_ok=True)
    remove_stale_temporaries(checkpoint)
    write_text_atomic(plan_file, json.dumps({"fingerprint": fingerprint}))

    blocks = plan_blocks(grid, settings["block_windows"])
    done = {b.index for b in blocks if _block_path(checkpoint, b.index).is_file()}
    todo = [b for b in blocks if b.index not in done]
    result.blocks, result.resumed_blocks = len(blocks), len(done)
    block_settings = BlockSettings(
        ortho=str(ortho.resolve()),
        run_dir=str(run_dir.resolve()),
        weights_sha256=card.weights_sha256,
        scaling=scaling,
        alpha_band=card.species_config().alpha_band,
        tile_size_px=card.tile_size_px,
        batch_size=settings["batch_size"],
        blend=settings["blend"],
        max_nodata_fraction=card.species_config().max_nodata_fraction,
    )
    started = time.perf_counter()
    _run_blocks(
        todo,
        grid,
        block_settings,
        checkpoint,
        client,
        progress,
        total_windows=sum(b.n_windows for b in todo),
        desc=f"map {name}",
    )

    result.seconds_windows = time.perf_counter() - started
    # Merge in block order: float sums come out bit-identical whoever computed the blocks.
    sums = np.zeros((len(card.class_names), grid.rows, grid.cols))
    weights = np.zeros((grid.rows, grid.cols))
    for block in blocks:
        part = BlockResult.load(_block_path(checkpoint, block.index))
        h, w = part.weights.shape
        sums[:, part.row0 : part.row0 + h, part.col0 : part.col0 + w] += part.sums
        weights[part.row0 : part.row0 + h, part.col0 : part.col0 + w] += part.weights
        result.windows += part.windows
        result.skipped += part.skipped
    if result.windows == 0:
        # An all-nodata map says nothing; most likely the nodata value or mask is wrong.
        shutil.rmtree(checkpoint, ignore_errors=True)
        limit = card.species_config().max_nodata_fraction
        raise RasterError(
            f"every one of the {result.skipped} model windows is more than {limit:.0%} "
            "nodata; nothing to map (check the nodata value or alpha band)",
            ortho,
        )
    ortho_source = OrthoSource(ortho, scaling, card.species_config().alpha_band)
    _write_outputs(result, card, sums, weights, crs, settings, fingerprint, ortho_source)
    shutil.rmtree(checkpoint, ignore_errors=True)
    result.seconds_total = time.perf_counter() - start_total
    return result


def _block_path(checkpoint: Path, index: int) -> Path:
    return checkpoint / f"block_{index:06d}.npz"


def _run_blocks(
    todo: list,
    grid: MapGrid,
    settings: BlockSettings,
    checkpoint: Path,
    client: Any,
    progress: bool | None,
    total_windows: int,
    desc: str,
) -> None:
    def save(part: BlockResult) -> None:
        with atomic_path(_block_path(checkpoint, part.index)) as tmp:
            part.save(tmp)

    bar = tqdm(
        total=total_windows,
        desc=desc,
        unit="win",
        leave=False,
        disable=None if progress is None else not progress,
    )
    try:
        if client is None:
            # Read the next block in a thread while the model classifies this one: GDAL
            # decoding and torch both release the GIL, so reading hides behind the forward.
            with ThreadPoolExecutor(max_workers=1) as reader:
                ahead = reader.submit(read_block, grid, todo[0], settings) if todo else None
                for i, block in enumerate(todo):
                    pixels = ahead.result()
                    if i + 1 < len(todo):
                        ahead = reader.submit(read_block, grid, todo[i + 1], settings)
                    save(classify_block(grid, pixels, settings))
                    bar.update(block.n_windows)
            return
        from dask.distributed import as_completed

        futures = [
            client.submit(
                predict_block,
                grid,
                block,
                settings,
                pure=False,
                key=f"spurge-map-{checkpoint.name}-{block.index}",
            )
            for block in todo
        ]
        sizes = {b.index: b.n_windows for b in todo}
        for future in as_completed(futures):
            part = future.result()
            save(part)
            bar.update(sizes[part.index])
            future.release()
    finally:
        bar.close()


def _up_to_date(paths: dict[str, Path], fingerprint: str) -> bool:
    record = paths["record"]
    if not record.is_file() or not all(p.is_file() for p in paths.values()):
        return False
    try:
        return json.loads(record.read_text())["fingerprint"] == fingerprint
    except (json.JSONDecodeError, KeyError):
        return False


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


def _write_outputs(
    result: OrthoMap,
    card: ModelCard,
    sums: np.ndarray,
    weights: np.ndarray,
    crs: Any,
    settings: dict[str, Any],
    fingerprint: str,
    ortho_source: OrthoSource,
) -> None:
    grid, paths, threshold = result.grid, result.outputs, settings["threshold"]
    prob01, prob_pct, classes, uncertainty = blend_outputs(
        sums, weights, card.positive_index, threshold
    )
    arrays = MapArrays(
        prob01,
        prob_pct,
        classes,
        normalized_entropy(sums, weights),
        uncertainty,
        grid.cell_transform,
        crs,
    )
    provenance = make_provenance(card, result.ortho, crs)
    info = write_products(
        paths,
        arrays,
        card,
        threshold,
        provenance,
        ortho_source,
        survey_points=settings["survey_points"],
        min_separation=max(1, grid.window_w // grid.stride_x),
        extra_tags={"spurge_model": card.backbone, "spurge_blend": settings["blend"]},
    )
    result.polygons, result.presence_area_m2 = info.polygons, info.presence_area_m2
    result.notes = info.notes
    record = {
        "fingerprint": fingerprint,
        # Paths relative to the map folder, so the folder can be moved or shared whole.
        "ortho": os.path.relpath(result.ortho.resolve(), paths["record"].parent.resolve()),
        "provenance": provenance.as_dict(),
        "crs": provenance.crs,
        "model": card.backbone,
        "weights_sha256": card.weights_sha256,
        "grid": grid.to_dict(),
        "settings": settings,
        "windows": result.windows,
        "skipped_windows": result.skipped,
        "notes": result.notes,
        "outputs": {
            k: {"path": p.name, "sha256": sha256_file(p)} for k, p in paths.items() if k != "record"
        },
    }
    write_text_atomic(paths["record"], json.dumps(record, indent=2, sort_keys=True))
