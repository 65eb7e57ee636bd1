"""Inference over one block of sliding windows: read, classify, blend into cell sums.

A block task needs only paths and small plain values, so a Dask worker (local or remote)
opens the orthomosaic and loads the model itself; what it returns is two small arrays (the
weighted class-probability sums and the weights of the cells its windows touch).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from spurge.classifier import ModelCard, TileClassifier, load_model, predict_proba
from spurge.io.raster import BandScaling, open_ortho, read_window_rgb8
from spurge.mapping.grid import (
    Block,
    MapGrid,
    block_cell_extent,
    cell_valid_fraction,
    cell_weights,
    covered_cells,
)

#: GDAL block cache (MB) while mapping. GDAL's default (5 % of RAM) would let the cache of
#: decoded ortho blocks grow with the orthomosaic; each block region is read once, so a
#: small cache costs nothing and keeps peak memory independent of the ortho's size.
GDAL_CACHE_MB = 64

_MODEL_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], tuple[TileClassifier, ModelCard]] = {}


def cached_model(run_dir: str, weights_sha256: str) -> tuple[TileClassifier, ModelCard]:
    """Load a model once per process (and per weights checksum) for all the blocks it maps."""
    key = (str(Path(run_dir).resolve()), weights_sha256)
    with _MODEL_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(run_dir)
        return _MODELS[key]


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
    model, card = cached_model(settings.run_dir, settings.weights_sha256)
    r0, r1, c0, c1 = block_cell_extent(grid, pixels.block)
    sums = np.zeros((len(card.class_names), r1 - r0, c1 - c0))
    weights = np.zeros((r1 - r0, c1 - c0))
    for first in range(0, len(pixels.images), settings.batch_size):
        batch = np.stack(pixels.images[first : first + settings.batch_size])
        probs = predict_proba(model, card, batch).astype(np.float64)
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
    return classify_block(grid, read_block(grid, block, settings), settings)
