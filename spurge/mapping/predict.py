"""Inference over one block of sliding windows: read, classify, blend into cell sums.

A block task needs only paths and small plain values, so a Dask worker (local or remote)
opens the orthomosaic and loads the model itself; what it returns is two small arrays (the
weighted class-probability sums and the weights of the cells its windows touch).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from spurge.backbones import fuse_batchnorm
from spurge.classifier import ModelCard, TileClassifier, load_model, preprocess
from spurge.device import resolve_device
from spurge.io.raster import BandScaling, open_ortho, read_window_rgb8
from spurge.mapping.dense import (
    DenseGeometry,
    DenseModel,
    Refinement,
    WindowGate,
    WindowProbabilities,
    cell_edges,
    cell_probabilities,
    cell_valid_share,
    feature_extractor,
    probe_stride,
    read_region,
    region_bounds,
    window_probabilities,
)
from spurge.mapping.grid import (
    Block,
    MapGrid,
    block_cell_extent,
    cell_valid_fraction,
    cell_weights,
    covered_cells,
    default_stride,
    window_starts,
)
from spurge.memory import return_freed_memory

#: GDAL block cache (MB) while mapping. GDAL's default (5 % of RAM) would let the cache of
#: decoded ortho blocks grow with the orthomosaic; each block region is read once, so a
#: small cache costs nothing and keeps peak memory independent of the ortho's size.
GDAL_CACHE_MB = 64

_MODEL_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], tuple[TileClassifier, ModelCard]] = {}


def cached_model(
    run_dir: str, weights_sha256: str, device: str = "cpu"
) -> tuple[TileClassifier, ModelCard]:
    """Load a model once per process (and per weights checksum and device) for all blocks."""
    key = (str(Path(run_dir).resolve()), weights_sha256, device)
    with _MODEL_LOCK:
        if key not in _MODELS:
            model, card = load_model(run_dir, resolve_device(device))
            # Inference only: BatchNorms folded into their convolutions (~2x faster on the
            # CPU for EfficientNet-Lite0; the same model for both methods).
            model = fuse_batchnorm(model, card.input_size)
            # Channels-last weights for channels-last inputs: the fast conv kernels.
            _MODELS[key] = (model.to(memory_format=torch.channels_last), card)
        return _MODELS[key]


@torch.no_grad()
def predict_windows(
    model: TileClassifier, card: ModelCard, images: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """Class probabilities (N, C) of uint8 (N, H, W, 3) windows, channels-last on purpose
    (about 2x faster for EfficientNet on the CPU), fp16 autocast and pinned memory on CUDA.
    """
    target = resolve_device(device)
    batch = preprocess(images, card).contiguous(memory_format=torch.channels_last)
    cuda = target.type == "cuda"
    if cuda:
        batch = batch.pin_memory()
    batch = batch.to(target, non_blocking=True)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
    with autocast:
        logits = model(batch)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


@dataclass(frozen=True)
class BlockSettings:
    """Everything a block task needs besides the grid and the block (all picklable)."""

    ortho: str
    run_dir: str
    weights_sha256: str
    scaling: dict[str, Any]
    alpha_band: int | None
    tile_size_px: int
    batch_size: int
    blend: str
    max_nodata_fraction: float
    #: Read each block's region once and crop windows from it when no resampling is needed.
    crop_from_region: bool = True
    device: str = "cpu"


@dataclass
class BlockResult:
    """Weighted probability sums (C, h, w) and weights (h, w) of cells from ``row0, col0``."""

    index: int
    row0: int
    col0: int
    sums: np.ndarray
    weights: np.ndarray
    windows: int
    skipped: int

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(
                handle,
                meta=np.array([self.index, self.row0, self.col0, self.windows, self.skipped]),
                sums=self.sums,
                weights=self.weights,
            )

    @classmethod
    def load(cls, path: Path) -> BlockResult:
        with np.load(path) as data:
            index, row0, col0, windows, skipped = (int(v) for v in data["meta"])
            return cls(index, row0, col0, data["sums"], data["weights"], windows, skipped)


@dataclass
class BlockPixels:
    """The windows of one block that are worth classifying, as uint8 RGB, with their masks."""

    block: Block
    images: list[np.ndarray]
    kept: list[tuple[int, int, np.ndarray]]  # (row_off, col_off, valid mask) per image
    skipped: int


def read_block(grid: MapGrid, block: Block, settings: BlockSettings) -> BlockPixels:
    """Read (and 8-bit scale) every window of ``block``, dropping mostly-nodata windows."""
    scaling = BandScaling.from_dict(settings.scaling)
    out_size = (settings.tile_size_px, settings.tile_size_px)
    row_starts, col_starts = grid.row_starts, grid.col_starts
    offsets = [
        (row_starts[i], col_starts[j])
        for i in range(*block.win_rows)
        for j in range(*block.win_cols)
    ]
    pixels = BlockPixels(block, [], [], 0)
    # At the model's GSD a window is a plain crop of the ortho (no resampling), and the pixel
    # path (band selection, scaling, masks) is per-pixel: read the block's region once and
    # crop windows from it instead of decoding every overlapping pixel up to four times.
    # Crops give exactly the bytes a direct window read gives.
    native = settings.crop_from_region and (grid.window_h, grid.window_w) == out_size
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_ortho(settings.ortho) as src:
        region = None
        if native:
            y0, x0 = offsets[0]
            y1, x1 = offsets[-1]
            region_window = Window(x0, y0, x1 + grid.window_w - x0, y1 + grid.window_h - y0)
            region = read_window_rgb8(src, region_window, scaling, settings.alpha_band)
        for y, x in offsets:
            if region is not None:
                crop = (
                    slice(y - y0, y - y0 + grid.window_h),
                    slice(x - x0, x - x0 + grid.window_w),
                )
                rgb, valid = region[0][crop], region[1][crop]
            else:
                window = Window(x, y, grid.window_w, grid.window_h)
                rgb, valid = read_window_rgb8(src, window, scaling, settings.alpha_band, out_size)
            # Windows that are mostly nodata would be classified from padding: skip them, and
            # cells that only they cover stay nodata.
            if 1.0 - valid.mean() > settings.max_nodata_fraction:
                pixels.skipped += 1
                continue
            pixels.images.append(rgb)
            pixels.kept.append((y, x, valid))
    return pixels


def classify_block(grid: MapGrid, pixels: BlockPixels, settings: BlockSettings) -> BlockResult:
    """Classify a block's windows in batches and blend the probabilities into its cells."""
    model, card = cached_model(settings.run_dir, settings.weights_sha256, settings.device)
    r0, r1, c0, c1 = block_cell_extent(grid, pixels.block)
    sums = np.zeros((len(card.class_names), r1 - r0, c1 - c0))
    weights = np.zeros((r1 - r0, c1 - c0))
    for first in range(0, len(pixels.images), settings.batch_size):
        batch = np.stack(pixels.images[first : first + settings.batch_size])
        probs = predict_windows(model, card, batch, settings.device).astype(np.float64)
        kept = pixels.kept[first : first + settings.batch_size]
        for (y, x, valid), prob in zip(kept, probs, strict=True):
            rows = covered_cells(y, grid.window_h, grid.stride_y)
            cols = covered_cells(x, grid.window_w, grid.stride_x)
            rows = (rows[0], min(rows[1], grid.rows))
            cols = (cols[0], min(cols[1], grid.cols))
            weight = np.outer(
                cell_weights(y, grid.window_h, grid.stride_y, *rows, settings.blend),
                cell_weights(x, grid.window_w, grid.stride_x, *cols, settings.blend),
            )
            if not valid.all():
                weight *= cell_valid_fraction(valid, y, x, grid, rows, cols) > 0
            sl = (slice(rows[0] - r0, rows[1] - r0), slice(cols[0] - c0, cols[1] - c0))
            sums[(slice(None), *sl)] += prob[:, None, None] * weight
            weights[sl] += weight
    return BlockResult(
        pixels.block.index, r0, c0, sums, weights, len(pixels.images), pixels.skipped
    )


def predict_block(grid: MapGrid, block: Block, settings: BlockSettings) -> BlockResult:
    """Read, classify and blend one block: the unit of work sent to Dask workers."""
    result = classify_block(grid, read_block(grid, block, settings), settings)
    return_freed_memory()  # in a Dask worker process: one block's peak, not all blocks'
    return result


# ---------------------------------------------------------------------------------------------
# Dense mode (``--method dense``): a block is a rectangle of output cells; its region (plus a
# margin of context, snapped to the window lattice) goes through the backbone once and the
# head's CAM logits are averaged over each cell. Blocks share no cells, so merging their
# results (sums = probabilities, weights = 1 on valid cells) gives the same bytes in any order.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseSettings:
    """Everything a dense block task needs besides the grid and the block (all picklable)."""

    ortho: str
    run_dir: str
    weights_sha256: str
    scaling: dict[str, Any]
    alpha_band: int | None
    max_nodata_fraction: float
    device: str = "cpu"
    #: False (default): windows on the lattice run as separate windows, as in training.
    #: True: each block runs as one image with a window of context around it.
    context: bool = False
    read_threads: int = 2
    #: Windows per forward in the tiled pass (on the CPU 16 keeps activations near 200 MB
    #: for EfficientNet-Lite0 at no cost in speed; GPUs take more).
    batch_tiles: int = 16

    #: Cap fine cells by the windows covering them (see ``dense.gate_by_windows``).
    gate: bool = True
    positive: int = 1
    #: The map's presence threshold: windows near it are classified alone (``Refinement``).
    threshold: float = 0.5
    #: Half-width of that band in probability; 0 pools every off-lattice window.
    refine_band: float = 0.05

    @property
    def margin(self) -> int:
        """Windows read around each block: context for the context pass; for the gate, the
        windows covering the block's edge cells (one window) and the windows sharing a
        windows-mode cell with those, which decide whether they are refined (two).
        """
        if self.gate:
            return 2 if self.refine_band > 0 else 1
        return 1 if self.context else 0

    def refinement(self, grid: MapGrid) -> Refinement | None:
        """The window refinement rule on this grid's windows, or None."""
        if self.refine_band <= 0:
            return None
        cells = (default_stride(grid.window_h), default_stride(grid.window_w))
        return Refinement(self.threshold, self.positive, *cells, self.refine_band)


@dataclass
class DenseRegion:
    """A block's region as read: uint8 RGB, validity, its ortho rows/cols and inside box."""

    block: Block
    rgb: np.ndarray
    valid: np.ndarray
    rows: tuple[int, int]
    cols: tuple[int, int]
    inside: tuple[int, int, int, int]
    edges: tuple[np.ndarray, np.ndarray]  # cell edges (rows, cols) in region px
    share: np.ndarray  # valid share of each cell


def plan_dense_blocks(grid: MapGrid, block_windows: int) -> list[Block]:
    """Blocks of cells (``win_rows``/``win_cols`` index cells here), row-major, about
    ``3/4 * block_windows`` windows a side (3000 px by default). Where cells and windows
    share a lattice every few thousand px (36 px cells and 250 px windows: every 4500 px)
    blocks follow it, so no block reads a window that another block reads too.
    """

    def starts(cells: int, window: int, cell: int) -> list[int]:
        target = max(1, round(block_windows * 3 * window / (4 * cell)))
        unit = math.lcm(window, cell) // cell
        if unit * cell <= 2 * target * cell:
            target = unit * max(1, round(target / unit))
        return [*range(0, cells, target), cells]

    rows = starts(grid.rows, grid.window_h, grid.stride_y)
    cols = starts(grid.cols, grid.window_w, grid.stride_x)
    blocks: list[Block] = []
    for r0, r1 in itertools.pairwise(rows):
        for c0, c1 in itertools.pairwise(cols):
            blocks.append(Block(len(blocks), (r0, r1), (c0, c1)))
    return blocks


#: Dense models by run, device, grid and ortho, the most recently used last. Each holds its
#: ortho's window CAM cache, so only the last few are kept.
_DENSE: OrderedDict[tuple[str, str, str], DenseModel] = OrderedDict()
_DENSE_KEPT = 2


def cached_dense_model(grid: MapGrid, settings: DenseSettings) -> tuple[DenseModel, ModelCard]:
    """The run's model as a :class:`DenseModel` on the settings' device, once per process."""
    model, card = cached_model(settings.run_dir, settings.weights_sha256, settings.device)
    # One per ortho (as it is on disk now) and scaling too: its cache holds that ortho's
    # window CAMs.
    stat = os.stat(settings.ortho)
    key = (
        settings.run_dir,
        settings.weights_sha256,
        f"{settings.device}{grid}{settings.context}{settings.ortho}{stat.st_size}"
        f"{stat.st_mtime_ns}{settings.scaling}{settings.alpha_band}{settings.batch_tiles}",
    )
    with _MODEL_LOCK:
        if key not in _DENSE:
            features = feature_extractor(card.backbone, model.backbone)
            device = resolve_device(settings.device)
            stride = probe_stride(features, card.input_size)
            geometry = DenseGeometry(
                grid.window_w,
                grid.window_h,
                card.input_size,
                stride,
                grid.stride_x,
                grid.stride_y,
                settings.margin,
            )
            _DENSE[key] = DenseModel(
                features,
                model.head,
                card.transform,
                geometry,
                device,
                not settings.context,
                settings.batch_tiles,
            )
            while len(_DENSE) > _DENSE_KEPT:
                _DENSE.popitem(last=False)
        _DENSE.move_to_end(key)
        return _DENSE[key], card


def read_dense_block(grid: MapGrid, block: Block, settings: DenseSettings) -> DenseRegion:
    """Read a dense block's region (cells + margin, on the window lattice), outside = 0."""
    rows = region_bounds(
        block.win_rows[0] * grid.stride_y,
        min(block.win_rows[1] * grid.stride_y, grid.height),
        grid.window_h,
        settings.margin,
        grid.height,
    )
    cols = region_bounds(
        block.win_cols[0] * grid.stride_x,
        min(block.win_cols[1] * grid.stride_x, grid.width),
        grid.window_w,
        settings.margin,
        grid.width,
    )
    scaling = BandScaling.from_dict(settings.scaling)
    size = (grid.width, grid.height)
    rgb, valid, inside = read_region(
        settings.ortho, size, rows, cols, scaling, settings.alpha_band, settings.read_threads
    )
    edges = (
        cell_edges(*block.win_rows, grid.stride_y, grid.height, rows[0]),
        cell_edges(*block.win_cols, grid.stride_x, grid.width, cols[0]),
    )
    # Computed here, in the reader thread, so the model never waits on it.
    share = cell_valid_share(valid, *edges)
    return DenseRegion(block, rgb, valid, rows, cols, inside, edges, share)


def _starts_inside(size: int, window: int, span: tuple[int, int]) -> np.ndarray:
    """Windows-mode window starts (half-window steps, last one flush with the ortho's edge)
    that fit in a region, in region px.
    """
    a = np.asarray(window_starts(size, window, default_stride(window)))
    return a[(a >= span[0]) & (a + window <= span[1])] - span[0]


def classify_dense_block(
    grid: MapGrid, region: DenseRegion, settings: DenseSettings
) -> BlockResult:
    """CAM logits of the region averaged over each cell -> class probabilities per cell."""
    dense, _ = cached_dense_model(grid, settings)
    block = region.block
    origin = (region.rows[0], region.cols[0])
    gate = None
    if settings.gate:
        gate = WindowGate(
            _starts_inside(grid.height, grid.window_h, region.rows),
            _starts_inside(grid.width, grid.window_w, region.cols),
            settings.positive,
            settings.refinement(grid),
            (grid.height, grid.width),
        )
    probs, _refined = cell_probabilities(
        dense, region.rgb, region.inside, origin, *region.edges, gate
    )
    # A cell is mapped when no more of it is nodata than a window may be.
    keep = (1.0 - region.share) <= settings.max_nodata_fraction
    weights = keep.astype(np.float64)
    return BlockResult(
        block.index,
        block.win_rows[0],
        block.win_cols[0],
        probs * weights[None],
        weights,
        int(keep.sum()),
        int((~keep).sum()),
    )


def predict_dense_block(grid: MapGrid, block: Block, settings: DenseSettings) -> BlockResult:
    """Read and classify one dense block: the unit of work sent to Dask workers."""
    result = classify_dense_block(grid, read_dense_block(grid, block, settings), settings)
    return_freed_memory()  # in a Dask worker process: one block's peak, not all blocks'
    return result


def dense_window_probabilities(grid: MapGrid, settings: DenseSettings) -> WindowProbabilities:
    """Class probabilities (C, window rows, window cols) of every window of ``grid`` (a window
    plan) from one dense pass, as a dense block computes them for its gate: the head on the
    lattice features averaged over each window's footprint, windows near the decision
    classified alone (``settings.refine_band``).

    For checks and benchmarks: it holds the whole ortho's region at once.
    """
    dense, _ = cached_dense_model(grid, settings)
    everything = Block(0, (0, grid.rows), (0, grid.cols))
    region = read_dense_block(grid, everything, settings)
    origin = (region.rows[0], region.cols[0])
    cam = dense.logits(region.rgb, region.inside, origin)
    starts = (
        np.array(grid.row_starts) - region.rows[0],
        np.array(grid.col_starts) - region.cols[0],
    )
    full = (grid.height, grid.width)
    refine = settings.refinement(grid)
    return window_probabilities(dense, region.rgb, region.inside, origin, cam, starts, full,
                                None, refine)  # fmt: skip


def blend_window_probabilities(grid: MapGrid, probs: np.ndarray) -> np.ndarray:
    """Per-window probabilities (C, rows, cols) -> cells, as the window path's ``mean`` blend
    (every window counts in each cell whose centre it covers).
    """
    sums = np.zeros((probs.shape[0], grid.rows, grid.cols))
    weights = np.zeros((grid.rows, grid.cols))
    for i, y in enumerate(grid.row_starts):
        r0, r1 = covered_cells(y, grid.window_h, grid.stride_y)
        for j, x in enumerate(grid.col_starts):
            c0, c1 = covered_cells(x, grid.window_w, grid.stride_x)
            sums[:, r0:r1, c0:c1] += probs[:, i, j, None, None]
            weights[r0:r1, c0:c1] += 1
    return sums / np.maximum(weights, 1)[None]
