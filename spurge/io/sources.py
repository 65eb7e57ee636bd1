"""``sources.json``: what ``spurge tile`` recorded about each orthomosaic and the tile geometry.

Written by :mod:`spurge.tiling` next to ``tiles.parquet``; read by ``train`` and ``augment``
(which refuse a species config whose tile geometry differs from the one the tiles were cut
with) and by ``map`` (which reuses the recorded 8-bit band scaling of an ortho it maps, so a
tiled ortho is scaled exactly as its training tiles were).

Format ``spurge-tile-sources/1``::

    {"format": ..., "config_fingerprint": ..., "tile_size_px": ..., "plot_size_m": ...,
     "gsd_m": ..., "quarters": ..., "alpha_band": ..., "manifest_crs": ...,
     "sources": [{"path", "site", "sha256", "crs", "width", "height", "transform",
                  "pixel_size_m", "scaling", "size_bytes", "mtime_ns"}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine

from spurge.config import SpeciesConfig
from spurge.errors import ManifestError
from spurge.io.atomic import write_text_atomic
from spurge.io.raster import BandScaling
from spurge.io.tiles import manifest_path

SOURCES_FILE = "sources.json"
SOURCES_FORMAT = "spurge-tile-sources/1"
#: Config keys that fix the tiles' geometry: a later stage with other values would train or
#: map at another scale than the tiles were cut at.
GEOMETRY_KEYS = ("tile_size_px", "plot_size_m", "gsd_m", "quarters")


@dataclass(frozen=True)
class Source:
    """An orthomosaic as the tiler sees it: where it is, its grid and its 8-bit scaling."""

    path: Path
    site: str
    sha256: str
    crs: str
    width: int
    height: int
    transform: Affine
    pixel_size_m: tuple[float, float]
    scaling: BandScaling
    size_bytes: int
    mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "site": self.site,
            "sha256": self.sha256,
            "crs": self.crs,
            "width": self.width,
            "height": self.height,
            "transform": list(self.transform)[:6],
            "pixel_size_m": list(self.pixel_size_m),
            "scaling": self.scaling.to_dict(),
            "size_bytes": self.size_bytes,
            "mtime_ns": self.mtime_ns,
        }


def sources_path(tiles_dir: str | Path) -> Path:
    """``sources.json`` beside the tile manifest of ``tiles_dir``."""
    return manifest_path(tiles_dir).parent / SOURCES_FILE


def write_sources(
    out_dir: Path, sources: list[Source], config: SpeciesConfig, manifest_crs: str
) -> None:
    """Write ``sources.json`` atomically, leaving it untouched when nothing changed."""
    payload = {
        "format": SOURCES_FORMAT,
        "config_fingerprint": config.fingerprint(),
        **{key: getattr(config, key) for key in GEOMETRY_KEYS},
        "alpha_band": config.alpha_band,
        "manifest_crs": manifest_crs,
        "sources": [s.to_dict() for s in sources],
    }
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    path = out_dir / SOURCES_FILE
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def read_sources_file(tiles_dir: str | Path) -> dict[str, Any] | None:
    """The whole ``sources.json`` of a tiles folder, or None where there is none."""
    path = sources_path(tiles_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read ({type(exc).__name__})", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise ManifestError("not a spurge sources.json (no 'sources' list)", path)
    return data


def load_sources(tiles_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``sources.json`` of a tiles folder: ortho path -> checksum, grid, scaling, site."""
    try:
        data = read_sources_file(tiles_dir)
        return {} if data is None else {entry["path"]: entry for entry in data["sources"]}
    except (ManifestError, KeyError, TypeError):
        return {}


def source_scaling(tiles_dir: str | Path, ortho: str | Path) -> BandScaling | None:
    """The 8-bit band scaling ``spurge tile`` used for ``ortho`` (None if not tiled from it)."""
    entry = load_sources(tiles_dir).get(str(Path(ortho).resolve()))
    return None if entry is None else BandScaling.from_dict(entry["scaling"])


def check_tiles_config(tiles_dir: str | Path, config: SpeciesConfig) -> None:
    """Refuse a config whose tile geometry differs from the one ``tiles_dir`` was cut with.

    ``spurge tile --config A`` then ``spurge train --config B`` would otherwise put B's tile
    size into ``model.json`` and so into the map's window size. A tiles folder without
    ``sources.json`` (built by hand) is accepted.
    """
    data = read_sources_file(tiles_dir)
    if data is None:
        return
    # Older sources.json files recorded only tile_size_px: check the keys that are there.
    recorded = {key: data[key] for key in GEOMETRY_KEYS if key in data}
    differing = [
        f"{key} {recorded[key]} (tiles) vs {getattr(config, key)} (config)"
        for key in GEOMETRY_KEYS
        if key in recorded and recorded[key] is not None and recorded[key] != getattr(config, key)
    ]
    if differing:
        raise ManifestError(
            "these tiles were cut with another species config: "
            + "; ".join(differing)
            + "; re-run `spurge tile` with this config or pass the config the tiles were cut with",
            sources_path(tiles_dir),
        )
