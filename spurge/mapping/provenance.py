"""Where a map came from, written identically into the TIFF tags, the GeoPackage metadata,
the GeoJSON/GPX descriptions and ``<name>.map.json``.

``created`` is the UTC time the map was written, to the second. For reproducible bytes
(two runs, or a resumed and a straight run, giving identical files) set
``SOURCE_DATE_EPOCH`` (the reproducible-builds convention): it replaces the clock.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spurge import __version__
from spurge.io.atomic import sha256_file


@dataclass(frozen=True)
class Provenance:
    species: str
    positive_class: str
    spurge_version: str
    weights_sha256: str
    created: str
    ortho_name: str
    ortho_sha256: str
    #: The maps' CRS as ``EPSG:<code>`` where it has one, else its WKT.
    crs: str

    def tags(self) -> dict[str, str]:
        """GeoTIFF metadata tags (GDAL_METADATA), prefixed ``spurge_``."""
        return {f"spurge_{k}": v for k, v in asdict(self).items()}

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        """One line for descriptions (GeoJSON, GPX, page)."""
        return (
            f"{self.species} ({self.positive_class}) mapped by spurge {self.spurge_version} "
            f"from {self.ortho_name} on {self.created}"
        )


def created_now() -> str:
    """ISO 8601 UTC time to the second; ``SOURCE_DATE_EPOCH`` pins it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else (crs.to_wkt() if crs is not None else "")


def make_provenance(card: Any, ortho: Path, crs: Any) -> Provenance:
    """Provenance of one map from its model card (species config inside) and its ortho."""
    config = card.species_config()
    return Provenance(
        species=config.species,
        positive_class=card.positive_class,
        spurge_version=__version__,
        weights_sha256=card.weights_sha256,
        created=created_now(),
        ortho_name=ortho.name,
        ortho_sha256=sha256_file(ortho),
        crs=crs_name(crs),
    )
