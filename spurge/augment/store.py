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


def _store_path(store_dir: str | Path, name: str) -> Path:
    store_dir = Path(store_dir)
    return store_dir if store_dir.suffix == ".parquet" else store_dir / name


def write_synthetic_manifest(rows: pd.DataFrame, store_dir: str | Path) -> Path:
    """Validate and write ``synthetic.parquet`` atomically, sorted by ``image_id``."""
    path = _store_path(store_dir, SYNTHETIC_MANIFEST)
    missing = [c for c in SYNTHETIC_COLUMNS if c not in rows.columns]
    if missing:
        raise ManifestError(f"synthetic manifest lacks columns {missing}", path)
    if rows["image_id"].duplicated().any():
        raise ManifestError("duplicate image_id values", path)
    ordered = rows[list(SYNTHETIC_COLUMNS)].astype(SYNTHETIC_COLUMNS)
    ordered = ordered.sort_values("image_id", kind="stable").reset_index(drop=True)
    with atomic_path(path) as tmp:
        ordered.to_parquet(tmp, index=False)
    return path


def read_synthetic_manifest(store_dir: str | Path) -> pd.DataFrame:
    """Read ``synthetic.parquet`` with its schema checked; ``path`` stays relative."""
    path = _store_path(store_dir, SYNTHETIC_MANIFEST)
    if not path.is_file():
        raise ManifestError("no synthetic manifest here; run `spurge augment` first", path)
    try:
        rows = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise ManifestError(f"cannot read synthetic manifest ({type(exc).__name__})", path) from exc
    missing = [c for c in SYNTHETIC_COLUMNS if c not in rows.columns]
    if missing:
        raise ManifestError(f"not a spurge synthetic manifest: missing columns {missing}", path)
    return rows.astype(SYNTHETIC_COLUMNS)


def synthetic_image_path(store_dir: str | Path, relative: str) -> Path:
    """Absolute path of an image listed in ``synthetic.parquet``."""
    return _store_path(store_dir, SYNTHETIC_MANIFEST).parent / relative


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
