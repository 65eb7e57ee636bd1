"""One reader and one writer for spurge's Parquet tables (tiles, synthetic, rejected).

Every table has a fixed column -> dtype schema, is written atomically, and may carry a
``config_fingerprint`` in its Parquet metadata: the species config it was made with. Rows
whose ``path`` leaves the table's folder (absolute, or with ``..``) are refused, so a manifest
can never point a stage at files outside its own folder (a held-out tile, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spurge.errors import ManifestError
from spurge.io.atomic import atomic_path

FINGERPRINT_KEY = b"config_fingerprint"


def table_path(folder_or_file: str | Path, name: str) -> Path:
    """``folder/name``, or the path itself when it already names a ``.parquet`` file."""
    path = Path(folder_or_file)
    return path if path.suffix == ".parquet" else path / name


def check_relative_paths(paths: pd.Series, table: Path) -> None:
    """Refuse ``path`` values that are absolute or climb out of the table's folder."""
    for value in paths.dropna():
        text = str(value)
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if (
            PurePosixPath(text).is_absolute()
            or PureWindowsPath(text).is_absolute()
            or ".." in parts
        ):
            raise ManifestError(
                f"row path {text!r} leaves the manifest's folder (paths must be relative, "
                "without '..')",
                table,
            )


def write_table(
    frame: pd.DataFrame,
    path: Path,
    columns: Mapping[str, str],
    *,
    kind: str,
    fingerprint: str | None = None,
    sort_by: str | None = None,
) -> Path:
    """Validate ``frame`` against ``columns`` and write it atomically (GeoParquet if geo)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"{kind} lacks columns {missing}", path)
    extra = ["geometry"] if "geometry" in frame.columns and "geometry" not in columns else []
    ordered = frame[[*columns, *extra]].astype(dict(columns))
    if sort_by is not None:
        ordered = ordered.sort_values(sort_by, kind="stable")
    ordered = ordered.reset_index(drop=True)
    if extra:
        import geopandas as gpd

        ordered = gpd.GeoDataFrame(ordered, geometry="geometry", crs=frame.crs)
    with atomic_path(path) as tmp:
        ordered.to_parquet(tmp, index=False)
        if fingerprint is not None:
            table = pq.read_table(tmp)
            meta = {**(table.schema.metadata or {}), FINGERPRINT_KEY: fingerprint.encode()}
            pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


def read_table(
    path: Path,
    columns: Mapping[str, str],
    *,
    kind: str,
    missing_hint: str,
    geo: bool = False,
    fingerprint: str | None = None,
) -> pd.DataFrame:
    """Read a table with its schema, row paths and (if given) config fingerprint checked."""
    if not path.is_file():
        raise ManifestError(f"no {kind} here; {missing_hint}", path)
    try:
        if geo:
            import geopandas as gpd

            frame: pd.DataFrame = gpd.read_parquet(path)
        else:
            frame = pd.read_parquet(path)
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ManifestError(f"cannot read {kind} ({type(exc).__name__})", path) from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"not a spurge {kind}: missing columns {missing}", path)
    recorded = meta.get(FINGERPRINT_KEY)
    if fingerprint is not None and recorded is not None and recorded.decode() != fingerprint:
        raise ManifestError(
            f"{kind} was made with another species config "
            f"(fingerprint {recorded.decode()}, this config {fingerprint})",
            path,
        )
    if "path" in frame.columns:
        check_relative_paths(frame["path"], path)
    return frame.astype(dict(columns))
