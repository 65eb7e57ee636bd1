"""The tile manifest (``tiles.parquet``): the contract between ``tile`` and later stages.

One GeoParquet row per tile. ``path`` is relative to the manifest's folder, so a tiles
folder can be moved or copied to another machine as a whole.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd

from spurge.errors import ManifestError
from spurge.io.atomic import atomic_path

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
    tiles_dir = Path(tiles_dir)
    return tiles_dir if tiles_dir.suffix == ".parquet" else tiles_dir / TILE_MANIFEST


def empty_tile_frame(crs: str | None = None) -> gpd.GeoDataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in TILE_COLUMNS.items()})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def write_tile_manifest(tiles: gpd.GeoDataFrame, tiles_dir: str | Path) -> Path:
    """Validate and write ``tiles.parquet`` atomically."""
    path = manifest_path(tiles_dir)
    missing = [c for c in TILE_COLUMNS if c not in tiles.columns]
    if missing:
        raise ManifestError(f"tile manifest lacks columns {missing}", path)
    if tiles["tile_id"].duplicated().any():
        dupes = tiles.loc[tiles["tile_id"].duplicated(), "tile_id"].head(3).tolist()
        raise ManifestError(f"duplicate tile_id values, e.g. {dupes}", path)
    ordered = tiles[[*TILE_COLUMNS, "geometry"]].astype(TILE_COLUMNS)
    ordered = gpd.GeoDataFrame(ordered, geometry="geometry", crs=tiles.crs)
    with atomic_path(path) as tmp:
        ordered.to_parquet(tmp, index=False)
    return path


def read_tile_manifest(tiles_dir: str | Path) -> gpd.GeoDataFrame:
    """Read ``tiles.parquet`` with its schema checked; ``path`` stays relative."""
    path = manifest_path(tiles_dir)
    if not path.is_file():
        raise ManifestError("no tile manifest here; run `spurge tile` first", path)
    try:
        tiles = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise ManifestError(f"cannot read tile manifest ({type(exc).__name__})", path) from exc
    missing = [c for c in TILE_COLUMNS if c not in tiles.columns]
    if missing:
        raise ManifestError(f"not a spurge tile manifest: missing columns {missing}", path)
    bad_splits = set(tiles["split"].dropna()) - set(SPLITS)
    if bad_splits:
        raise ManifestError(f"unknown split values {sorted(bad_splits)}", path)
    return tiles


def tile_image_path(tiles_dir: str | Path, relative: str) -> Path:
    """Absolute path of a tile image listed in the manifest."""
    return manifest_path(tiles_dir).parent / relative
