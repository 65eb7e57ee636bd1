"""Files shipped inside the package, so that a wheel or a non-editable install has them.

- ``configs/*.yaml``: the named species configs (``--config leafy_spurge``). A checkout's
  top-level ``configs/`` is a link to this folder.
- ``qgis/*.qml``: the QGIS style templates ``spurge map`` fills (probability, presence and
  uncertainty rasters; the GeoPackage's presence and survey layers).
"""

from __future__ import annotations

from pathlib import Path

RESOURCE_DIR = Path(__file__).resolve().parent

#: The species configs that ship with spurge, one ``<name>.yaml`` each.
CONFIG_DIR = RESOURCE_DIR / "configs"

#: The QGIS style templates (``probability.qml``, ``presence.qml``, ``*_layer.qml``).
QGIS_TEMPLATE_DIR = RESOURCE_DIR / "qgis"
