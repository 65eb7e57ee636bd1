"""Fixtures for the train/evaluate/classifier tests: tiny tile folders and synthetic stores."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from PIL import Image
from shapely.geometry import box

from spurge.config import SpeciesConfig
from spurge.io.manifest import write_tile_manifest

SIDE = 32


def tiny_config() -> SpeciesConfig:
    return SpeciesConfig(
        species="test spurge",
        classes=[
            {"name": "absent", "initializer": "grass"},
            {"name": "present", "initializer": "flowers"},
        ],
        positive_class="present",
        plot_size_m=3.2,
        tile_size_px=SIDE,
        quarters=True,
        gsd_m=0.05,
    )


def toy_tile(label: str, rng: np.random.Generator) -> np.ndarray:
    """Green grass noise; 'present' tiles carry yellow blobs (easy but not trivial)."""
    base = np.array([90, 120, 60], dtype=np.float32) * rng.uniform(0.8, 1.2)
    image = base + rng.normal(0, 18, (SIDE, SIDE, 3))
    if label == "present":
        for _ in range(int(rng.integers(2, 5))):
            r, c = rng.integers(0, SIDE, 2)
            rr, cc = np.ogrid[:SIDE, :SIDE]
            disc = (rr - r) ** 2 + (cc - c) ** 2 <= rng.integers(9, 30)
            image[disc] = np.array([200, 205, 60]) + rng.normal(0, 10, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_tiles(
    out: Path,
    plots_per_class: dict[str, int] | None = None,
    splits: tuple[str, ...] = ("train", "train", "val", "test"),
    seed: int = 0,
) -> Path:
    """A tiles folder: one site per split entry, 2x2 quarter tiles per plot, PNGs + manifest."""
    plots_per_class = plots_per_class or {"absent": 3, "present": 3}
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for s, split in enumerate(splits):
        site = f"site_{s}"
        for label, n_plots in plots_per_class.items():
            for p in range(n_plots):
                plot_id = f"{site}_{label}_{p}"
                for q in range(4):
                    tile_id = f"{plot_id}_q{q}"
                    rel = f"images/{tile_id}.png"
                    Image.fromarray(toy_tile(label, rng)).save(out / rel)
                    x0 = 1000.0 * s + 10 * p + 1.6 * (q % 2)
                    y0 = 5000.0 + 1.6 * (q // 2) + (100 if label == "present" else 0)
                    rows.append(
                        {
                            "tile_id": tile_id,
                            "path": rel,
                            "label": label,
                            "site": site,
                            "plot_id": plot_id,
                            "split": split,
                            "source": f"{site}.tif",
                            "source_sha256": "0" * 64,
                            "row_off": 32 * (q // 2),
                            "col_off": 32 * (q % 2),
                            "height": SIDE,
                            "width": SIDE,
                            "crs": "EPSG:32612",
                            "gsd_m": 0.05,
                            "geometry": box(x0, y0, x0 + 1.6, y0 + 1.6),
                        }
                    )
    write_tile_manifest(gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32612"), out)
    return out


def make_synthetic_store(
    out: Path,
    tiles_dir: Path,
    per_tile: int = 2,
    method: str = "da-fusion",
    seed: int = 0,
    tile_ids: list[str] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> Path:
    """A synthetic.parquet with jittered copies of train tiles (stand-in for `spurge augment`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tiles = gpd.read_parquet(tiles_dir / "tiles.parquet")
    tiles = tiles[tiles["split"] == "train"]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for _, tile in tiles.iterrows():
        if tile_ids is not None and tile["tile_id"] not in tile_ids:
            continue
        for k in range(per_tile):
            image_id = f"{tile['tile_id']}_s{k}"
            rel = f"images/{image_id}.png"
            Image.fromarray(toy_tile(tile["label"], rng)).save(out / rel)
            rows.append(
                {
                    "image_id": image_id,
                    "path": rel,
                    "label": tile["label"],
                    "source_tile_id": tile["tile_id"],
                    "method": method,
                    "prompt": "a photo",
                    "context": "grassland",
                    "strength": 0.5,
                    "seed": k,
                    "model_id": "tiny-random",
                    "model_hash": "x",
                    "token_hash": "y",
                    "steps": 2,
                    "guidance": 7.5,
                }
            )
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    pq.write_table(table, out / "synthetic.parquet")
    return out
