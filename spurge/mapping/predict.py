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


def predict_block(grid: MapGrid, block: Block, settings: BlockSettings) -> BlockResult:
    """Classify every window of ``block`` and blend the probabilities into its cells."""
    model, card = cached_model(settings.run_dir, settings.weights_sha256)
    scaling = BandScaling.from_dict(settings.scaling)
    r0, r1, c0, c1 = block_cell_extent(grid, block)
    sums = np.zeros((len(card.class_names), r1 - r0, c1 - c0))
    weights = np.zeros((r1 - r0, c1 - c0))
    out_size = (settings.tile_size_px, settings.tile_size_px)
    row_starts, col_starts = grid.row_starts, grid.col_starts
    offsets = [
        (row_starts[i], col_starts[j])
        for i in range(*block.win_rows)
        for j in range(*block.win_cols)
    ]
    used = skipped = 0
    with open_ortho(settings.ortho) as src:
        for first in range(0, len(offsets), settings.batch_size):
            images, kept = [], []
            for y, x in offsets[first : first + settings.batch_size]:
                window = Window(x, y, grid.window_w, grid.window_h)
                rgb, valid = read_window_rgb8(src, window, scaling, settings.alpha_band, out_size)
                # Windows that are mostly nodata would be classified from padding: skip them,
                # and cells that only they cover stay nodata.
                if 1.0 - valid.mean() > settings.max_nodata_fraction:
                    skipped += 1
                    continue
                images.append(rgb)
                kept.append((y, x, valid))
            if not images:
                continue
            probs = predict_proba(model, card, np.stack(images)).astype(np.float64)
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
                used += 1
    return BlockResult(block.index, r0, c0, sums, weights, used, skipped)
