"""Run by Debian's /usr/bin/python3 (PyQGIS), not by the project's venv: loads every output of
one ``spurge map`` run in headless QGIS and prints what QGIS made of it as JSON.

Usage: ``QT_QPA_PLATFORM=offscreen python3 qgis_probe.py MAP_FOLDER NAME RENDER.png``.
The map is rendered with the probability raster and the GeoPackage layers only, over white,
at 8 px per cell, to RENDER.png; the test compares its pixels with the COG's values.
"""

import json
import os
import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

PX_PER_CELL = 8


def raster_info(layer):
    renderer = layer.renderer()
    info = {
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "extent": [
            layer.extent().xMinimum(),
            layer.extent().yMinimum(),
            layer.extent().xMaximum(),
            layer.extent().yMaximum(),
        ],
        "renderer": renderer.type() if renderer else None,
        "opacity": renderer.opacity() if renderer else None,
    }
    if renderer and renderer.type() == "singlebandpseudocolor":
        shader = renderer.shader().rasterShaderFunction()
        info["ramp"] = [
            [i.value, i.color.red(), i.color.green(), i.color.blue(), i.color.alpha()]
            for i in shader.colorRampItemList()
        ]
    if renderer and renderer.type() == "paletted":
        info["classes"] = [[c.value, c.label, c.color.alpha()] for c in renderer.classes()]
    return info


def vector_info(layer):
    renderer = layer.renderer()
    symbol = renderer.symbol() if renderer and hasattr(renderer, "symbol") else None
    info = {
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
        "count": layer.featureCount(),
        "geometry": layer.geometryType(),
        "fields": [f.name() for f in layer.fields()],
        "renderer": renderer.type() if renderer else None,
        "labels": layer.labelsEnabled(),
    }
    if symbol is not None:
        sl = symbol.symbolLayer(0)
        info["symbol_layer"] = sl.layerType()
        props = sl.properties()
        info["props"] = {k: str(v) for k, v in props.items()}
    return info


def main():
    folder, name, render_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = QgsApplication([], False)
    app.initQgis()
    out = {"qgis": __import__("qgis.core").core.Qgis.QGIS_VERSION, "rasters": {}, "vectors": {}}
    layers = {}
    for kind in ["prob", "presence", "uncertainty"]:
        layer = QgsRasterLayer(str(folder / f"{name}_{kind}.tif"), kind)
        layers[kind] = layer
        out["rasters"][kind] = raster_info(layer)
    for layer_name in ["presence", "survey_next"]:
        layer = QgsVectorLayer(
            f"{folder / (name + '.gpkg')}|layername={layer_name}", layer_name, "ogr"
        )
        layers[layer_name] = layer
        out["vectors"][layer_name] = vector_info(layer)
    for stem in ["presence", "survey"]:
        layer = QgsVectorLayer(str(folder / f"{name}_{stem}.geojson"), stem, "ogr")
        out["vectors"][f"{stem}.geojson"] = vector_info(layer)
    gpx = QgsVectorLayer(f"{folder / (name + '_survey.gpx')}|layername=waypoints", "gpx", "ogr")
    out["vectors"]["gpx"] = vector_info(gpx)
    out["gpx_names"] = [f["name"] for f in gpx.getFeatures()]

    prob = layers["prob"]
    settings = QgsMapSettings()
    settings.setLayers([prob])
    settings.setDestinationCrs(prob.crs())
    settings.setExtent(prob.extent())
    settings.setOutputSize(QSize(prob.width() * PX_PER_CELL, prob.height() * PX_PER_CELL))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(render_path, "PNG")
    out["render_extent"] = [
        settings.visibleExtent().xMinimum(),
        settings.visibleExtent().yMinimum(),
        settings.visibleExtent().xMaximum(),
        settings.visibleExtent().yMaximum(),
    ]
    # The styled vectors over the rasters: a second render for eyes (and outline pixels).
    settings.setLayers([layers["survey_next"], layers["presence"], prob])
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(render_path.replace(".png", "_all.png"), "PNG")
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    # QGIS 3.22 can crash while tearing down offscreen Qt: the answer is already out.
    os._exit(0)


main()
