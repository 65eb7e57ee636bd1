"""Files shipped inside the package, so that a wheel or a non-editable install has them.

- ``configs/*.yaml``: the named species configs (``--config leafy_spurge``). A checkout's
  top-level ``configs/`` is a link to this folder.
- ``qgis/probability.qml``: the QGIS style ``spurge map`` writes beside each probability COG.
"""

from __future__ import annotations

from pathlib import Path

RESOURCE_DIR = Path(__file__).resolve().parent

#: The species configs that ship with spurge, one ``<name>.yaml`` each.
CONFIG_DIR = RESOURCE_DIR / "configs"

#: The QGIS style template for the probability raster.
PROBABILITY_QML = RESOURCE_DIR / "qgis" / "probability.qml"
