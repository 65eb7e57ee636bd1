"""Tiny tile folders for the augment tests (``spurge tile`` output is built by hand here)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
from PIL import Image
from shapely.geometry import box

from spurge.config import SpeciesConfig
from spurge.io.manifest import write_tile_manifest


def tiny_config(**overrides) -> SpeciesConfig:
    values = dict(
        species="leafy spurge",
        classes=[
            {"name": "absent", "initializer": "grassland"},
            {
                "name": "present",
                "initializer": "flowers",
                "description": "leafy spurge with yellow bracts",
            },
        ],
        positive_class="present",
        context_prompts=["grassland", "snow", "mountain"],
        plot_size_m=3.2,
        tile_size_px=32,
        quarters=True,
        gsd_m=0.05,
    )
    values.update(overrides)
    return SpeciesConfig(**values)


def make_tiles(
    folder: Path, per_class: int = 2, size: int = 64, extra: list[dict] | None = None, seed: int = 0
) -> Path:
    """``per_class`` labelled train tiles per class plus one val and one unlabelled tile."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    specs = [("absent", "train")] * per_class + [("present", "train")] * per_class
    specs += [("present", "val"), (None, "unlabelled")]
    for k, (label, split) in enumerate(specs):
        tile_id = f"site_000_p{k:02d}_q0"
        rel = f"images/{tile_id}.png"
        base = np.array([60, 140, 50] if label != "present" else [190, 200, 40], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / rel)
        x0, y0 = 500000.0 + k * size * 0.05, 5000000.0
        rows.append(
            {
                "tile_id": tile_id,
                "path": rel,
                "label": label,
                "site": "site_000",
                "plot_id": f"p{k:02d}",
                "split": split,
                "source": "site_000.tif",
                "source_sha256": "0" * 64,
                "row_off": 0,
                "col_off": k * size,
                "height": size,
                "width": size,
                "crs": "EPSG:32612",
                "gsd_m": 0.05,
                "geometry": box(x0, y0 - size * 0.05, x0 + size * 0.05, y0),
            }
        )
    for row in extra or []:
        rows.append(row)
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32612")
    write_tile_manifest(frame, folder)
    return folder
