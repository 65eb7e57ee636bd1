"""``spurge map``: presence maps over whole orthomosaics, resumable and optionally on Dask.

:func:`map_orthos` checks the model and plans every orthomosaic (:mod:`spurge.mapping.plan`)
before anything is written, and refuses an ``--out`` where an output would replace an input.
Then, per orthomosaic and under a lock on its outputs (:mod:`spurge.mapping.checkpoint`), it
maps blocks of windows (:func:`spurge.mapping.predict.predict_block`, in-process or on a Dask
cluster), saving each finished block in the resume checkpoint, merges the blocks in a fixed
order (same bytes whatever ran them) and writes the outputs chosen in :class:`MapSettings`
all together or not at all (:func:`spurge.mapping.products.write_products`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from tqdm import tqdm

from spurge.classifier import MODEL_CARD, MODEL_WEIGHTS, ModelCard, load_model
from spurge.device import resolve_device
from spurge.errors import ModelError, RasterError, SpurgeError, one_line
from spurge.io.atomic import ensure_writable_dir, remove_stale_temporaries
from spurge.io.paths import refuse_overwriting_inputs
from spurge.io.raster import open_ortho, pixel_size_m
from spurge.mapping.checkpoint import (
    CHECKPOINT_PREFIX,
    Checkpoint,
    fingerprint,
    output_lock,
    up_to_date,
)
from spurge.mapping.dense import (
    DenseUnsupportedError,
    cell_px_for,
    feature_extractor,
    finest_cell_px,
    probe_stride,
)
from spurge.mapping.grid import Block, MapGrid, plan_blocks
from spurge.mapping.page import OrthoSource
from spurge.mapping.plan import GsdWarning, OrthoPlan, check_card, plan_ortho
from spurge.mapping.predict import (
    BlockResult,
    BlockSettings,
    DenseSettings,
    classify_block,
    classify_dense_block,
    plan_dense_blocks,
    predict_block,
    predict_dense_block,
    read_block,
    read_dense_block,
)
from spurge.mapping.products import make_product, output_paths, write_products
from spurge.mapping.provenance import make_provenance
from spurge.mapping.settings import BLENDS, GSD_POLICIES, METHODS, MapSettings
from spurge.memory import return_freed_memory

__all__ = [
    "BLENDS",
    "CHECKPOINT_PREFIX",
    "GSD_POLICIES",
    "METHODS",
    "GsdWarning",
    "MapResult",
    "MapSettings",
    "OrthoMap",
    "map_orthos",
]


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
    scaling_source: str = ""
    #: Wall time spent on windows (read, classify, blend) and on the whole ortho.
    seconds_windows: float = 0.0
    seconds_total: float = 0.0
    method: str = "windows"
    #: Things the user should know about the products (e.g. the page shows a shrunk ortho).
    notes: list[str] = field(default_factory=list)


@dataclass
class MapResult:
    out_dir: Path
    maps: list[OrthoMap] = field(default_factory=list)
    threshold: float = 0.5
    workers: str = "single process"
    #: Why the default method (dense) was not used, when it was not.
    method_note: str = ""

    def summary(self) -> str:
        parts = []
        for m in self.maps:
            if m.up_to_date:
                parts.append(f"{m.ortho.name}: already mapped with these settings")
                continue
            resumed = (
                f", {m.resumed_blocks} resumed from a previous run" if m.resumed_blocks else ""
            )
            what = (
                f"dense, {m.windows} cells ({m.skipped} left nodata)"
                if m.method == "dense"
                else f"{m.windows} windows of {m.grid.window_w}x{m.grid.window_h} px "
                f"({m.skipped} skipped as nodata)"
            )
            parts.append(
                f"{m.ortho.name}: {what} in {m.blocks} blocks{resumed} -> "
                f"{m.grid.cols}x{m.grid.rows} cells of {m.grid.stride_x}x{m.grid.stride_y} px, "
                f"{m.polygons} presence polygon(s) covering {m.presence_area_m2:.1f} m²; "
                f"band scaling {m.scaling_source}" + "".join(f" (note: {n})" for n in m.notes)
            )
        files = sorted({p.name for m in self.maps for p in m.outputs.values()})
        note = f" Note: {self.method_note}." if self.method_note else ""
        return (
            f"Mapped {len(self.maps)} orthomosaic(s) into {self.out_dir} ({self.workers}; "
            f"presence where probability >= {self.threshold:.2f}): " + "; ".join(parts) + ". "
            f"Files: {', '.join(files)}.{note}"
        )


def _settings(settings: MapSettings | None, overrides: dict[str, Any]) -> MapSettings:
    """``settings`` with keyword overrides (``workers`` is the old name of ``dask_workers``)."""
    if "workers" in overrides:
        overrides["dask_workers"] = overrides.pop("workers")
    known = {f.name for f in fields(MapSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"map_orthos() got unexpected keyword argument(s) {unknown}")
    return replace(settings or MapSettings(), **overrides)


def map_orthos(
    orthos: Sequence[str | Path],
    run_dir: str | Path,
    out_dir: str | Path = "maps",
    settings: MapSettings | None = None,
    **overrides: Any,
) -> MapResult:
    """Map presence over whole orthomosaics with a trained tile classifier.

    Args:
        orthos: orthomosaic paths (GeoTIFF/COG/VRT); output names come from their stems.
        run_dir: run folder with ``model.safetensors`` + ``model.json`` (``spurge train``).
        out_dir: output folder (created).
        settings: how to map (defaults: :class:`MapSettings`).
        overrides: any :class:`MapSettings` field, e.g. ``stride=8, progress=False``.
    """
    settings = _settings(settings, overrides)
    settings = replace(settings, device=str(resolve_device(settings.device)))
    paths = [Path(o) for o in orthos]
    _check_names(paths)
    run_dir = Path(run_dir)
    model, card = _load_model(run_dir)
    method, why = _choose_method(settings, card, model)
    settings = replace(settings, method=method)
    # Check the model and every orthomosaic before anything is written, so a bad second
    # ortho does not stop the run after the first was mapped.
    plans = [plan_ortho(o, card, settings) for o in paths]
    if settings.method == "dense":
        stride = probe_stride(feature_extractor(card.backbone, model.backbone), card.input_size)
        plans = [_dense_plan(p, card, stride, settings.cell_size) for p in plans]
    out = Path(out_dir)
    finals = [p for o in paths for p in output_paths(out, o.stem, settings.writer_names).values()]
    refuse_overwriting_inputs(finals, [*paths, run_dir / MODEL_CARD, run_dir / MODEL_WEIGHTS])
    out = ensure_writable_dir(out)
    remove_stale_temporaries(out)  # only those of dead runs
    result = MapResult(out_dir=out, threshold=settings.threshold, method_note=why)
    with _dask_client(settings) as client:
        if client is not None:
            result.workers = (
                f"Dask: {settings.scheduler}"
                if settings.scheduler
                else f"Dask LocalCluster, {settings.dask_workers} workers"
            )
        for plan in plans:
            with output_lock(out, plan.name):
                result.maps.append(_map_one(plan, run_dir, card, out, settings, client))
    return result


def _choose_method(settings: MapSettings, card: ModelCard, model: Any) -> tuple[str, str]:
    """The method asked for, or (no ``--method``) dense where the backbone can run densely
    and no ``--stride`` is asked for; with why windows was chosen instead ('' otherwise).
    """
    if settings.method is not None:
        return settings.method, ""
    if settings.stride is not None:
        return "windows", ""
    try:
        feature_extractor(card.backbone, model.backbone)
    except DenseUnsupportedError as exc:
        return "windows", f"windows mode: {exc}"
    return "dense", ""


def _check_names(orthos: list[Path]) -> None:
    if not orthos:
        raise SpurgeError("no orthomosaic given")
    names = [o.stem for o in orthos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpurgeError(
            f"several orthomosaics share the name {duplicates[0]!r}; outputs "
            "would collide, map them into different --out folders"
        )


def _load_model(run_dir: Path) -> tuple[Any, ModelCard]:
    """Load the model once here, so a bad card or bad weights stop the run before mapping."""
    try:
        model, card = load_model(run_dir)
    except SafetensorError as exc:
        raise ModelError(
            f"cannot read the weights ({one_line(exc, 160)})", run_dir / MODEL_WEIGHTS
        ) from exc
    check_card(card, run_dir)
    return model, card


def _dense_plan(plan: OrthoPlan, card: ModelCard, stride: int, cell_m: float | None) -> OrthoPlan:
    """The plan with dense cells: ``cell_m`` metres, default one backbone feature step."""
    with open_ortho(plan.ortho) as src:
        pixels = pixel_size_m(src)
    grid = plan.grid
    cells = []
    for axis, window, pixel in (("x", grid.window_w, pixels[0]), ("y", grid.window_h, pixels[1])):
        finest = finest_cell_px(window, card.input_size, stride)
        cells.append(finest if cell_m is None else cell_px_for(cell_m, pixel, finest, axis))
    return replace(plan, grid=replace(grid, stride_x=cells[0], stride_y=cells[1]))


@contextlib.contextmanager
def _dask_client(settings: MapSettings) -> Iterator[Any]:
    """A Dask client (None without Dask), closed quietly even after Ctrl-C."""
    if settings.dask_workers is None and settings.scheduler is None:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    cluster = None
    if settings.scheduler is not None:
        try:
            client = Client(settings.scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SpurgeError(
                f"cannot reach the Dask scheduler {settings.scheduler!r} ({one_line(exc, 160)})"
            ) from exc
    else:
        with _sigint_ignored():  # worker processes inherit it: Ctrl-C reaches only us
            cluster = LocalCluster(
                n_workers=settings.dask_workers,
                threads_per_worker=1,
                processes=settings.processes,
                dashboard_address=None,
                # Workers log from their own processes: after Ctrl-C each reports its cancelled
                # task as a WARNING, which would bury the CLI's one-line message. Errors still
                # show; a real failure reaches the user as the task's exception anyway.
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    try:
        yield client
    except KeyboardInterrupt:
        # Shutting down mid-task makes Dask log every cancelled task and closed comm: the
        # user asked to stop, so say nothing but the CLI's one line.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _map_one(
    plan: OrthoPlan,
    run_dir: Path,
    card: ModelCard,
    out: Path,
    settings: MapSettings,
    client: Any,
) -> OrthoMap:
    start_total = time.perf_counter()
    paths = output_paths(out, plan.name, settings.writer_names)
    record_path = paths.pop("record")
    result = OrthoMap(plan.ortho, {**paths, "record": record_path}, plan.grid)
    result.method = settings.method or "windows"
    result.scaling_source = plan.scaling_source
    key = fingerprint(plan, card, settings)
    if up_to_date(paths, record_path, key):
        result.up_to_date = True
        return result
    checkpoint = Checkpoint(out, plan.name)
    checkpoint.open(key)
    planner = plan_dense_blocks if settings.method == "dense" else plan_blocks
    blocks = planner(plan.grid, settings.block_windows)
    todo = [b for b in blocks if not checkpoint.has(b.index)]
    result.blocks, result.resumed_blocks = len(blocks), len(blocks) - len(todo)
    started = time.perf_counter()
    _run_blocks(todo, plan, _block_settings(plan, run_dir, card, settings), checkpoint, client,
                settings.progress)  # fmt: skip
    result.seconds_windows = time.perf_counter() - started
    sums, weights = _merge(blocks, checkpoint, plan.grid, len(card.class_names), result)
    if result.windows == 0:
        # An all-nodata map says nothing; most likely the nodata value or mask is wrong.
        checkpoint.remove()
        limit = card.species_config().max_nodata_fraction
        raise RasterError(
            f"every one of the {result.skipped} model windows is more than {limit:.0%} "
            "nodata; nothing to map (check the nodata value or alpha band)",
            plan.ortho,
        )
    product = make_product(
        plan.name, card, plan.grid, plan.crs, sums, weights, threshold=settings.threshold,
        blend=settings.blend, survey_points=settings.survey_points,
        provenance=make_provenance(card, plan.ortho, plan.crs),
        ortho=OrthoSource(plan.ortho, plan.scaling.to_dict(), card.species_config().alpha_band),
    )  # fmt: skip
    result.polygons = len(product.polygons)
    result.presence_area_m2 = float(product.polygons["area_m2"].sum()) if result.polygons else 0.0
    record = _record_builder(plan, card, settings, key, result, product)
    write_products(product, {**paths, "record": record_path}, settings.writer_names, record)
    result.notes = product.notes
    checkpoint.remove()
    result.seconds_total = time.perf_counter() - start_total
    return result


def _block_settings(
    plan: OrthoPlan, run_dir: Path, card: ModelCard, settings: MapSettings
) -> BlockSettings | DenseSettings:
    config = card.species_config()
    common: dict[str, Any] = dict(
        ortho=str(plan.ortho.resolve()),
        run_dir=str(run_dir.resolve()),
        weights_sha256=card.weights_sha256,
        scaling=plan.scaling.to_dict(),
        alpha_band=config.alpha_band,
        max_nodata_fraction=config.max_nodata_fraction,
        device=settings.device,
    )
    if settings.method == "dense":
        # 16 windows per forward keep CPU activations near 200 MB; GPUs take more.
        batch_tiles = settings.batch_size * 4 if settings.device != "cpu" else 16
        return DenseSettings(
            **common,
            batch_tiles=batch_tiles,
            positive=card.positive_index,
            threshold=settings.threshold,
            refine_band=settings.refine_band,
        )
    return BlockSettings(
        **common,
        tile_size_px=card.tile_size_px,
        batch_size=settings.batch_size,
        blend=settings.blend,
    )


def _block_functions(settings: BlockSettings | DenseSettings) -> tuple[Any, Any, Any]:
    """(read, classify, predict) block functions for the windows or the dense method."""
    if isinstance(settings, DenseSettings):
        return read_dense_block, classify_dense_block, predict_dense_block
    return read_block, classify_block, predict_block


def _merge(
    blocks: list[Block], checkpoint: Checkpoint, grid: MapGrid, n_classes: int, result: OrthoMap
) -> tuple[np.ndarray, np.ndarray]:
    """Sum the saved blocks in block order: float sums come out bit-identical whoever
    computed the blocks.
    """
    sums = np.zeros((n_classes, grid.rows, grid.cols))
    weights = np.zeros((grid.rows, grid.cols))
    for block in blocks:
        part = checkpoint.load(block.index)
        h, w = part.weights.shape
        sums[:, part.row0 : part.row0 + h, part.col0 : part.col0 + w] += part.sums
        weights[part.row0 : part.row0 + h, part.col0 : part.col0 + w] += part.weights
        result.windows += part.windows
        result.skipped += part.skipped
    return sums, weights


def _record_builder(
    plan: OrthoPlan,
    card: ModelCard,
    settings: MapSettings,
    key: str,
    result: OrthoMap,
    product: Any,
) -> Any:
    """``<name>.map.json``: provenance, settings, counts and every output with its sha256.

    Paths are relative to the map folder, so the folder can be moved or shared whole.
    """
    folder = result.outputs["record"].parent.resolve()

    def build(outputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "fingerprint": key,
            "ortho": os.path.relpath(plan.ortho.resolve(), folder),
            "provenance": product.provenance.as_dict(),
            "crs": product.provenance.crs,
            "notes": product.notes,
            "model": card.backbone,
            "weights_sha256": card.weights_sha256,
            "grid": plan.grid.to_dict(),
            "scaling": {**plan.scaling.to_dict(), "source": plan.scaling_source},
            "settings": settings.fingerprint(),
            "windows": result.windows,
            "skipped_windows": result.skipped,
            "outputs": outputs,
        }

    return build


def _run_blocks(
    todo: list[Block],
    plan: OrthoPlan,
    settings: BlockSettings | DenseSettings,
    checkpoint: Checkpoint,
    client: Any,
    progress: bool | None,
) -> None:
    bar = tqdm(
        total=sum(b.n_windows for b in todo),
        desc=f"map {plan.name}",
        unit="win",
        leave=False,
        disable=None if progress is None else not progress,
    )
    try:
        if client is None:
            _run_local(todo, plan.grid, settings, checkpoint, bar)
        else:
            _run_dask(todo, plan.grid, settings, checkpoint, bar, client)
    finally:
        bar.close()


def _run_local(
    todo: list[Block],
    grid: MapGrid,
    settings: BlockSettings | DenseSettings,
    checkpoint: Checkpoint,
    bar: Any,
) -> None:
    read, classify, _ = _block_functions(settings)
    # Read the next block in a thread while the model classifies this one: GDAL decoding and
    # torch both release the GIL, so reading hides behind the forward.
    with ThreadPoolExecutor(max_workers=1) as reader:
        if not todo:
            return
        ahead = reader.submit(read, grid, todo[0], settings)
        for i, block in enumerate(todo):
            pixels = ahead.result()
            if i + 1 < len(todo):
                ahead = reader.submit(read, grid, todo[i + 1], settings)
            checkpoint.save(classify(grid, pixels, settings))
            del pixels
            return_freed_memory()  # peak memory of one block, not of all of them
            bar.update(block.n_windows)


def _run_dask(
    todo: list[Block],
    grid: MapGrid,
    settings: BlockSettings | DenseSettings,
    checkpoint: Checkpoint,
    bar: Any,
    client: Any,
) -> None:
    from dask.distributed import as_completed

    _, _, predict = _block_functions(settings)
    futures = [
        client.submit(
            predict,
            grid,
            block,
            settings,
            pure=False,
            key=f"spurge-map-{checkpoint.folder.name}-{block.index}",
        )
        for block in todo
    ]
    sizes = {b.index: b.n_windows for b in todo}
    for future in as_completed(futures):
        part: BlockResult = future.result()
        checkpoint.save(part)
        bar.update(sizes[part.index])
        future.release()
