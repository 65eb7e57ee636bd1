"""The tile manifest (``tiles.parquet``): the contract between ``tile`` and later stages.

One GeoParquet row per tile. ``path`` is relative to the manifest's folder, so a tiles
folder can be moved or copied to another machine as a whole.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd

from spurge.errors import ManifestError
from spurge.io.table import read_table, table_path, write_table

TILE_MANIFEST = "tiles.parquet"

#: Column -> pandas dtype. ``geometry`` (the tile footprint, in the manifest's CRS) comes last.
TILE_COLUMNS: dict[str, str] = {
    "tile_id": "string",
    "path": "string",
    "label": "string",  # null for unlabelled grid tiles
    "site": "string",
    "plot_id": "string",
    "split": "string",  # train / val / test, or "unlabelled"
    "source": "string",  # orthomosaic path
    "source_sha256": "string",
    "row_off": "int64",
    "col_off": "int64",
    "height": "int64",
    "width": "int64",
    "crs": "string",
    "gsd_m": "float64",
}

SPLITS = ("train", "val", "test", "unlabelled")


def manifest_path(tiles_dir: str | Path) -> Path:
    """``tiles_dir/tiles.parquet`` (or ``tiles_dir`` itself when it names the file)."""
    return table_path(tiles_dir, TILE_MANIFEST)


def empty_tile_frame(crs: str | None = None) -> gpd.GeoDataFrame:
    """A tile manifest with no rows (the schema's columns and dtypes)."""
    frame = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in TILE_COLUMNS.items()})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def write_tile_manifest(tiles: gpd.GeoDataFrame, tiles_dir: str | Path) -> Path:
    """Validate and write ``tiles.parquet`` atomically."""
    path = manifest_path(tiles_dir)
    if tiles["tile_id"].duplicated().any():
        dupes = tiles.loc[tiles["tile_id"].duplicated(), "tile_id"].head(3).tolist()
        raise ManifestError(f"duplicate tile_id values, e.g. {dupes}", path)
    return write_table(tiles, path, TILE_COLUMNS, kind="tile manifest")


def read_tile_manifest(tiles_dir: str | Path) -> gpd.GeoDataFrame:
    """Read ``tiles.parquet`` with its schema checked; ``path`` stays relative."""
    path = manifest_path(tiles_dir)
    tiles = read_table(
        path, TILE_COLUMNS, kind="tile manifest", missing_hint="run `spurge tile` first", geo=True
    )
    bad_splits = set(tiles["split"].dropna()) - set(SPLITS)
    if bad_splits:
        raise ManifestError(f"unknown split values {sorted(bad_splits)}", path)
    return tiles


def tile_image_path(tiles_dir: str | Path, relative: str) -> Path:
    """Absolute path of a tile image listed in the manifest."""
    return manifest_path(tiles_dir).parent / relative
