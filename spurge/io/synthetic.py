"""The synthetic store: images plus ``synthetic.parquet``, the contract with ``spurge train``.

Layout of a store folder::

    tokens/<class>.safetensors     learned tokens (textual inversion)
    images/<label>/<image_id>.png  synthetic tiles, written atomically
    synthetic.parquet              one provenance row per image (SYNTHETIC_COLUMNS)
    rejected.parquet               images a filter dropped (so a re-run does not redo them)

``image_id`` is a hash of everything that determines an image, so an image file on disk is
complete and correct by construction: resuming after a kill only generates missing files, an
identical plan generates nothing, and a changed parameter changes only the ids it touches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spurge.errors import ManifestError
from spurge.io.atomic import atomic_path
from spurge.io.table import read_table, table_path, write_table

SYNTHETIC_MANIFEST = "synthetic.parquet"
REJECTED_MANIFEST = "rejected.parquet"
IMAGES_DIR = "images"

#: Column -> pandas dtype, exactly the DESIGN.md contract (``path`` relative to the store).
SYNTHETIC_COLUMNS: dict[str, str] = {
    "image_id": "string",
    "path": "string",
    "label": "string",
    "source_tile_id": "string",
    "method": "string",
    "prompt": "string",  # as written, with the class token unexpanded (e.g. "<present>")
    "context": "string",  # null for the plain prompt
    "strength": "float64",
    "seed": "int64",
    "model_id": "string",
    "model_hash": "string",
    "token_hash": "string",  # sha256 of the class's token file; null without tokens
    "steps": "int64",  # sampler schedule length; img2img runs int(steps * strength) of them
    "guidance": "float64",
}

REJECTED_COLUMNS: dict[str, str] = {"image_id": "string", "filter": "string", "score": "float64"}


def image_relpath(label: str, image_id: str) -> str:
    return f"{IMAGES_DIR}/{label}/{image_id}.png"


def empty_synthetic_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in SYNTHETIC_COLUMNS.items()})


def write_synthetic_manifest(
    rows: pd.DataFrame, store_dir: str | Path, config_fingerprint: str | None = None
) -> Path:
    """Validate and write ``synthetic.parquet`` atomically, sorted by ``image_id``.

    ``config_fingerprint`` (the species config's) goes into the Parquet metadata, so that
    ``spurge train`` can refuse a store made for another species config.
    """
    path = table_path(store_dir, SYNTHETIC_MANIFEST)
    if rows["image_id"].duplicated().any():
        raise ManifestError("duplicate image_id values", path)
    return write_table(
        rows,
        path,
        SYNTHETIC_COLUMNS,
        kind="synthetic manifest",
        fingerprint=config_fingerprint,
        sort_by="image_id",
    )


def read_synthetic_manifest(
    store_dir: str | Path, config_fingerprint: str | None = None
) -> pd.DataFrame:
    """Read ``synthetic.parquet`` with its schema checked; ``path`` stays relative.

    With ``config_fingerprint``, a store recorded with another config is refused.
    """
    return read_table(
        table_path(store_dir, SYNTHETIC_MANIFEST),
        SYNTHETIC_COLUMNS,
        kind="synthetic manifest",
        missing_hint="run `spurge augment` first",
        fingerprint=config_fingerprint,
    )


def synthetic_image_path(store_dir: str | Path, relative: str) -> Path:
    """Absolute path of an image listed in ``synthetic.parquet``."""
    return table_path(store_dir, SYNTHETIC_MANIFEST).parent / relative


def read_rejected(store_dir: str | Path) -> pd.DataFrame:
    path = Path(store_dir) / REJECTED_MANIFEST
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=d) for c, d in REJECTED_COLUMNS.items()})
    try:
        return pd.read_parquet(path).astype(REJECTED_COLUMNS)
    except Exception as exc:
        raise ManifestError(
            f"cannot read rejected-image list ({type(exc).__name__})", path
        ) from exc


def write_rejected(rows: pd.DataFrame, store_dir: str | Path) -> Path:
    path = Path(store_dir) / REJECTED_MANIFEST
    ordered = rows[list(REJECTED_COLUMNS)].astype(REJECTED_COLUMNS)
    ordered = ordered.drop_duplicates("image_id", keep="last").sort_values("image_id")
    with atomic_path(path) as tmp:
        ordered.reset_index(drop=True).to_parquet(tmp, index=False)
    return path
