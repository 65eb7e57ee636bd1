"""Another invasive species is one new YAML file: no code changes (docs/new-species.md).

A config that spurge has never seen, written to a temporary folder with its own class names,
field-sheet column names and tile layout, drives `spurge synth` and `spurge tile` by path.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from spurge.cli import cli
from spurge.io.tiles import read_tile_manifest, tile_image_path

# Cheatgrass survey: whole-plot tiles (no quarters) of 48 px at 5 cm, so a plot is 2.4 m, and
# field sheets whose columns are named `bromus`, `ranch` and `quadrat`.
CHEATGRASS_YAML = """\
species: cheatgrass
scientific_name: Bromus tectorum
classes:
  - name: clear
    initializer: grassland
  - name: cheatgrass
    initializer: brome
    description: purple-tinged cheatgrass going to seed
positive_class: cheatgrass
label_column: bromus
site_column: ranch
plot_id_column: quadrat
prompt_template: "a drone photo of {token}"
context_template: "a drone photo of {token} on a {context}"
context_prompts: [burn scar, sagebrush steppe]
plot_size_m: 2.4
tile_size_px: 48
quarters: false
gsd_m: 0.05
"""
SITES = 2
PLOTS_PER_SITE = 9  # what `spurge synth` lays out per site


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("cheatgrass")
    config = work / "cheatgrass.yaml"
    config.write_text(CHEATGRASS_YAML, encoding="utf-8")
    synth = work / "synth"
    invoke(
        "synth",
        "--out",
        str(synth),
        "--sites",
        str(SITES),
        "--size-px",
        "256",
        "--config",
        str(config),
    )
    orthos = sorted(str(p) for p in synth.glob("site_*[0-9].tif"))
    tiles = work / "tiles"
    invoke(
        "tile",
        *orthos,
        "--labels",
        str(synth / "plots.gpkg"),
        "--config",
        str(config),
        "--out",
        str(tiles),
    )
    return synth, tiles


def test_synth_labels_plots_with_the_new_classes_and_columns(tiled) -> None:
    synth, _ = tiled
    plots = gpd.read_file(synth / "plots.gpkg")
    assert {"bromus", "ranch", "quadrat"} <= set(plots.columns)
    assert set(plots["bromus"]) == {"clear", "cheatgrass"}
    assert len(plots) == SITES * PLOTS_PER_SITE


def test_tile_cuts_whole_plot_tiles_of_the_new_size(tiled) -> None:
    synth, tiles = tiled
    manifest = read_tile_manifest(tiles)
    plots = gpd.read_file(synth / "plots.gpkg")
    # quarters: false -> one tile per plot, named after the config's plot-id column.
    assert len(manifest) == len(plots)
    assert sorted(manifest["plot_id"]) == sorted(plots["quadrat"])
    assert set(manifest["label"]) == {"clear", "cheatgrass"}
    assert (manifest["width"] == 48).all() and (manifest["height"] == 48).all()
    row = manifest.iloc[0]
    image = np.asarray(Image.open(tile_image_path(tiles, row.path)))
    assert image.shape == (48, 48, 3)
    truth = dict(zip(plots["quadrat"], plots["bromus"], strict=True))
    assert [truth[p] for p in manifest["plot_id"]] == list(manifest["label"])
