"""Bad-input matrix: every stage fed broken, odd or hostile inputs through the real CLI.

Each case ends in one of two ways:

* an error: exit code 1, a single ``error: <file>: <problem>`` line that names the problem,
  no traceback (``--debug`` brings it back), and nothing written under an output's final
  name;
* a correct result: exit code 0 and complete outputs.

Either way the inputs are byte-identical afterwards (SHA-256 before and after) and no
temporary file of :mod:`spurge.io.atomic` is left behind. Two more cases kill ``spurge
augment`` and ``spurge map`` with SIGKILL halfway and check that re-running the command
finishes with exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import yaml
from click.testing import CliRunner, Result
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import Window
from safetensors.torch import save_file
from shapely.geometry import Point

from spurge.classifier import ModelCard, build_classifier, save_model
from spurge.cli import cli
from spurge.config import SpeciesConfig
from spurge.errors import SpurgeError
from spurge.io.atomic import TMP_PREFIX, sha256_file
from spurge.io.raster import BandScaling
from spurge.mapping.run import CHECKPOINT_PREFIX
from tests import builders
from tests.conftest import REPO_ROOT, TESTDATA, make_tiny_config, require_testdata

# A 256 x 256 px orthomosaic at the tiny config's 5 cm GSD in UTM 12N: 12.8 m square,
# room for 3 x 3 plots of 3.2 m (64 px), each cut into four 32 px quarter tiles.
ORTHO_PX = 256
GSD_M = 0.05
ORIGIN_X, ORIGIN_Y = 500_000.0, 5_200_000.0
CRS_UTM12N = "EPSG:32612"
PLOT_CENTRES_PX = (40, 128, 216)
N_PLOTS = len(PLOT_CENTRES_PX) ** 2
TILES_PER_PLOT = 4

REAL_NO_CRS = "2019_YELL_2_541000_4977000_image_crop.tiff"
REAL_TO_TRUNCATE = "OSBS_029.tif"
#: Real orthos tiled with --grid: 4-band uint8 (band 4 undefined, not alpha); 5-band float32
#: reflectance with nodata -10000 over ~59 % of it; 1-band float32; 16-bit RGBA without CRS.
REAL_GRID_ORTHOS = ("rgb.tif", "615.tif", "gray.tif", "rgb_uint16.tif")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Every input file of the matrix, built once per module under ``root``."""

    root: Path
    config: Path
    orthos: dict[str, Path]
    plots: dict[str, Path]
    configs: dict[str, Path]
    tiles: dict[str, Path]
    model: Path
    model_mismatch: Path
    tokens: dict[str, Path]
    a_file: Path

    def testdata(self, name: str) -> Path:
        return require_testdata(name)


def _texture(seed: int) -> np.ndarray:
    """Grass-like RGB noise with yellow blobs: varied enough for percentile scaling."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 30, (3, ORTHO_PX, ORTHO_PX))
    rows, cols = np.ogrid[:ORTHO_PX, :ORTHO_PX]
    for r, c in rng.integers(0, ORTHO_PX, (12, 2)):
        disc = (rows - r) ** 2 + (cols - c) ** 2 < 100
        image[:, disc] = np.array([200.0, 200.0, 40.0])[:, None]
    return np.clip(image, 1, 255)


def write_ortho(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = CRS_UTM12N,
    nodata: float | None = None,
    alpha: bool = False,
    photometric: str | None = None,
    size_px: int = ORTHO_PX,
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": size_px,
        "height": size_px,
        "count": data.shape[0],
        "dtype": str(data.dtype),
        "transform": from_origin(ORIGIN_X, ORIGIN_Y, GSD_M, GSD_M),
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if alpha:
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    if photometric is not None:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _plot_frame(labels: list[str], crs: str = CRS_UTM12N) -> gpd.GeoDataFrame:
    points = [
        Point(ORIGIN_X + (c + 0.5) * GSD_M, ORIGIN_Y - (r + 0.5) * GSD_M)
        for r in PLOT_CENTRES_PX
        for c in PLOT_CENTRES_PX
    ]
    frame = gpd.GeoDataFrame(
        {
            "label": labels,
            "site": ["meadow"] * len(labels),
            "plot_id": [f"p{i}" for i in range(len(labels))],
        },
        geometry=points,
        crs=CRS_UTM12N,
    )
    return frame.to_crs(crs)


def _labels() -> list[str]:
    return ["absent" if i % 2 else "present" for i in range(N_PLOTS)]


def _make_orthos(root: Path) -> dict[str, Path]:
    rgb = _texture(0)
    alpha = np.full((1, ORTHO_PX, ORTHO_PX), 255, dtype=np.uint8)
    alpha[:, :80, :80] = 0  # the top-left plot lies under transparent pixels
    rng = np.random.default_rng(1)
    orthos = {
        "rgb": write_ortho(root / "rgb.tif", rgb.astype(np.uint8)),
        "no_crs": write_ortho(root / "no_crs.tif", rgb.astype(np.uint8), crs=None),
        # Reflectance-like floats and 16-bit counts: scaled to 8 bits from percentiles.
        "float32": write_ortho(
            root / "float32.tif", (rgb / 1000).astype(np.float32), nodata=-10000.0
        ),
        "uint16": write_ortho(root / "uint16.tif", (rgb * 200).astype(np.uint16)),
        "rgba": write_ortho(
            root / "rgba.tif", np.concatenate([rgb.astype(np.uint8), alpha]), alpha=True
        ),
        # Red, green, blue and near-infrared (written as MINISBLACK: 4-band uint8 would
        # otherwise default to RGB + alpha): the config's bands [1, 2, 3] pick RGB.
        "rgbn": write_ortho(
            root / "rgbn.tif",
            np.concatenate([rgb, rng.uniform(0, 255, (1, ORTHO_PX, ORTHO_PX))]).astype(np.uint8),
            photometric="MINISBLACK",
        ),
        "all_nodata": write_ortho(
            root / "all_nodata.tif", np.zeros((3, ORTHO_PX, ORTHO_PX), np.uint8), nodata=0
        ),
    }
    corrupt = root / "corrupt.tif"
    corrupt.write_bytes(np.random.default_rng(2).bytes(50_000))
    orthos["corrupt"] = corrupt
    return orthos


def _make_plots(root: Path) -> dict[str, Path]:
    plots = {}
    plots["good"] = root / "plots.gpkg"
    _plot_frame(_labels()).to_file(plots["good"])
    plots["wgs84"] = root / "plots_wgs84.geojson"
    _plot_frame(_labels(), crs="EPSG:4326").to_file(plots["wgs84"])
    plots["off_raster"] = root / "plots_off_raster.gpkg"
    _plot_frame(_labels()).translate(xoff=10_000).to_frame("geometry").assign(
        label=_labels(), site="meadow", plot_id=[f"p{i}" for i in range(N_PLOTS)]
    ).to_file(plots["off_raster"])
    plots["empty"] = root / "plots_empty.geojson"
    plots["empty"].write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    plots["unknown_class"] = root / "plots_unknown_class.gpkg"
    _plot_frame([*_labels()[:-1], "maybe"]).to_file(plots["unknown_class"])
    plots["no_label_column"] = root / "plots_no_label_column.gpkg"
    _plot_frame(_labels()).rename(columns={"label": "species"}).to_file(plots["no_label_column"])
    plots["csv"] = root / "plots.csv"
    frame = _plot_frame(_labels())
    pd.DataFrame({"x": frame.geometry.x, "y": frame.geometry.y, "label": frame["label"]}).to_csv(
        plots["csv"], index=False
    )
    return plots


def _make_configs(root: Path) -> dict[str, Path]:
    good = make_tiny_config().model_dump(mode="json")
    configs = {}
    for name, values in {
        "good": good,
        "unknown_key": {**good, "tile_sise_px": 32},
        "bad_value": {**good, "tile_size_px": 3},
    }.items():
        configs[name] = root / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(values, sort_keys=False))
    configs["not_yaml"] = root / "not_yaml.yaml"
    configs["not_yaml"].write_text("species: [tiny spurge\nclasses: {\n")
    return configs


def _make_model(run_dir: Path, config: SpeciesConfig) -> Path:
    """A random-weight ``random-small`` classifier with a real model card (fast to map with)."""
    torch.manual_seed(0)
    model, spec = build_classifier("random-small", len(config.class_names), pretrained=False)
    card = ModelCard.for_classifier("random-small", spec, config)
    run_dir.mkdir(parents=True)
    save_model(model, card, run_dir)
    return run_dir


def _make_tokens(root: Path) -> dict[str, Path]:
    """Token folders for augment: one lacking a class, one with the wrong embedding width."""
    width = 32  # the tiny-random text encoder's embedding width
    missing, wrong_width = root / "tokens_missing", root / "tokens_wrong_width"
    for folder in (missing, wrong_width):
        folder.mkdir()
        save_file({"<absent>": torch.zeros(4, width)}, str(folder / "absent.safetensors"))
    save_file({"<present>": torch.zeros(4, 7)}, str(wrong_width / "present.safetensors"))
    return {"missing": missing, "wrong_width": wrong_width}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("inputs")
    config = make_tiny_config()
    model_mismatch = _make_model(root / "model_mismatch", config)
    card = json.loads((model_mismatch / "model.json").read_text())
    card["class_names"] = [*card["class_names"], "lookalike"]  # 3 classes, 2-class weights
    (model_mismatch / "model.json").write_text(json.dumps(card))
    a_file = root / "a_file"
    a_file.write_text("a regular file where an output folder's parent should be\n")
    return World(
        root=root,
        config=root / "good.yaml",
        orthos=_make_orthos(root),
        plots=_make_plots(root),
        configs=_make_configs(root),
        tiles={
            "augment": builders.make_small_tiles(root / "tiles_augment"),
            "train": builders.make_site_tiles(root / "tiles_train"),
            "other_classes": builders.make_site_tiles(
                root / "tiles_other_classes", plots_per_class={"absent": 3, "thistle": 3}
            ),
        },
        model=_make_model(root / "model", config),
        model_mismatch=model_mismatch,
        tokens=_make_tokens(root),
        a_file=a_file,
    )


@pytest.fixture(scope="module")
def truncated_real_tiff(world: World) -> Path:
    """The first half of a real NEON GeoTIFF: the header parses, the pixel strips do not."""
    real = world.testdata(REAL_TO_TRUNCATE)
    path = world.root / "truncated.tif"
    if not path.exists():
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------------------------------
# Invariants checked around every case
# ---------------------------------------------------------------------------------------------


def checksums(paths: list[Path]) -> dict[str, str]:
    files = sorted(
        {f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}
    )
    return {str(f): sha256_file(f) for f in files}


def leftover_temporaries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.name.startswith((TMP_PREFIX, CHECKPOINT_PREFIX))]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result, problem: str) -> None:
    """Exit 1 with one ``error:`` line naming ``problem``; no traceback, nothing unexpected."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    # "unexpected <Type>" is the CLI's last resort for an exception that is not a SpurgeError.
    assert not lines[0].startswith("error: unexpected"), result.output
    assert problem.lower() in lines[0].lower(), result.output


def assert_nothing_written(out: Path) -> None:
    """A failed run leaves no file at all: no output under its final name, no temporary."""
    written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
    assert written == [], written


# ---------------------------------------------------------------------------------------------
# The error matrix
# ---------------------------------------------------------------------------------------------

Args = Callable[[World, Path], list[str]]


@dataclass(frozen=True)
class ErrorCase:
    id: str
    args: Args  # the command line, given the inputs and the case's output folder
    problem: str  # a word or phrase the one-line error must contain


def _tile(ortho: str, plots: str = "good", *extra: str) -> Args:
    def args(w: World, out: Path) -> list[str]:
        source = w.testdata(ortho) if "." in ortho else w.orthos[ortho]
        labels = w.plots[plots]
        return ["tile", str(source), "--labels", str(labels), *extra, "--config", str(w.config),
                "--out", str(out)]  # fmt: skip

    return args


def _tile_grid(real_ortho: str) -> Args:
    """``spurge tile --grid`` over a real ortho from the shared test data (no plots needed)."""

    def args(w: World, out: Path) -> list[str]:
        return ["tile", str(w.testdata(real_ortho)), "--grid", "--config", str(w.config),
                "--out", str(out)]  # fmt: skip

    return args


def _augment(
    *, tiles: str = "augment", model: str = "tiny-random", tokens: str | None = None
) -> Args:
    def args(w: World, out: Path) -> list[str]:
        tiles_dir = w.tiles.get(tiles, w.root / "no_such_tiles")
        token_args = ["--tokens", str(w.tokens[tokens])] if tokens else []
        return ["augment", str(tiles_dir), "--config", str(w.config), "--model", model,
                "--per-tile", "1", "--steps", "1", "--strengths", "1.0", "--token-steps", "1",
                *token_args,
                "--out", str(out)]  # fmt: skip

    return args


def _train(tiles: Callable[[World], Path], *extra: str) -> Args:
    def args(w: World, out: Path) -> list[str]:
        return ["train", str(tiles(w)), "--config", str(w.config), "--backbone", "random-small",
                "--steps", "1", *extra, "--out", str(out)]  # fmt: skip

    return args


def _map(ortho: Callable[[World], Path], model: Callable[[World], Path] | None = None) -> Args:
    def args(w: World, out: Path) -> list[str]:
        run_dir = model(w) if model else w.model
        return ["map", str(ortho(w)), "--model", str(run_dir), "--out", str(out)]

    return args


def _synth(config: str) -> Args:
    def args(w: World, out: Path) -> list[str]:
        return ["synth", "--out", str(out), "--sites", "1", "--size-px", "64",
                "--config", str(w.configs[config])]  # fmt: skip

    return args


def _unwritable(args: Args, where: str) -> Args:
    """Redirect ``--out`` to a folder that cannot be created (tests run as root, so chmod
    would not stop them): under /proc, or below a regular file.
    """

    def redirected(w: World, out: Path) -> list[str]:
        target = Path("/proc/spurge-out") if where == "proc" else w.a_file / "out"
        return args(w, target)

    return redirected


ERROR_CASES = [
    # tile
    ErrorCase("tile-no-crs", _tile("no_crs"), "CRS"),
    ErrorCase("tile-no-crs-real-ortho", _tile(REAL_NO_CRS), "CRS"),
    ErrorCase("tile-plots-off-the-raster", _tile("rgb", "off_raster"), "inside"),
    ErrorCase("tile-empty-plots", _tile("rgb", "empty"), "empty"),
    ErrorCase("tile-unknown-class", _tile("rgb", "unknown_class"), "unknown class"),
    ErrorCase("tile-no-class-column", _tile("rgb", "no_label_column"), "class column"),
    ErrorCase("tile-csv-plots-without-crs", _tile("rgb", "csv"), "CRS"),
    ErrorCase("tile-corrupt-tiff", _tile("corrupt"), "cannot read"),
    ErrorCase("tile-all-nodata", _tile("all_nodata"), "nodata"),
    ErrorCase("tile-1-band-real-ortho", _tile_grid("gray.tif"), "has 1 band(s)"),
    ErrorCase("tile-16-bit-rgba-real-ortho-no-crs", _tile_grid("rgb_uint16.tif"), "CRS"),
    ErrorCase("tile-unwritable-out-proc", _unwritable(_tile("rgb"), "proc"), "output folder"),
    ErrorCase("tile-unwritable-out-file", _unwritable(_tile("rgb"), "file"), "output folder"),
    # augment
    ErrorCase("augment-missing-model", _augment(model="/nonexistent/sd"), "does not exist"),
    ErrorCase(
        "augment-missing-token-file",
        _augment(tokens="missing"),
        "token file for class 'present' is missing",
    ),
    ErrorCase("augment-mismatched-token", _augment(tokens="wrong_width"), "width"),
    ErrorCase("augment-missing-tiles", _augment(tiles="missing"), "no tile manifest"),
    ErrorCase("augment-unwritable-out", _unwritable(_augment(), "proc"), "output folder"),
    # train
    ErrorCase(
        "train-fewer-tiles-than-shots",
        _train(lambda w: w.tiles["train"], "--shots", "99"),
        "fewer than --shots",
    ),
    ErrorCase(
        "train-missing-tiles-dir",
        _train(lambda w: w.root / "no_such_tiles"),
        "no tile manifest",
    ),
    ErrorCase(
        "train-tiles-of-another-config",
        _train(lambda w: w.tiles["other_classes"]),
        "not classes of the config",
    ),
    ErrorCase(
        "train-unwritable-out",
        _unwritable(_train(lambda w: w.tiles["train"]), "file"),
        "output folder",
    ),
    # map
    ErrorCase(
        "map-missing-model",
        _map(lambda w: w.orthos["rgb"], lambda w: w.root / "no_model"),
        "model.json",
    ),
    ErrorCase(
        "map-model-json-mismatch",
        _map(lambda w: w.orthos["rgb"], lambda w: w.model_mismatch),
        "cannot load weights",
    ),
    ErrorCase("map-no-crs", _map(lambda w: w.orthos["no_crs"]), "CRS"),
    ErrorCase("map-no-crs-real-ortho", _map(lambda w: w.testdata(REAL_NO_CRS)), "CRS"),
    ErrorCase("map-corrupt-tiff", _map(lambda w: w.orthos["corrupt"]), "cannot read"),
    ErrorCase("map-all-nodata", _map(lambda w: w.orthos["all_nodata"]), "nodata"),
    ErrorCase(
        "map-unwritable-out-proc",
        _unwritable(_map(lambda w: w.orthos["rgb"]), "proc"),
        "output folder",
    ),
    ErrorCase(
        "map-unwritable-out-file",
        _unwritable(_map(lambda w: w.orthos["rgb"]), "file"),
        "output folder",
    ),
    # species config
    ErrorCase("config-unknown-key", _synth("unknown_key"), "tile_sise_px: unknown key"),
    ErrorCase("config-invalid-value", _synth("bad_value"), "tile_size_px"),
    ErrorCase("config-not-yaml", _synth("not_yaml"), "not valid YAML"),
]


def _used_inputs(world: World) -> list[Path]:
    """The module's inputs and the real test files the matrix reads."""
    real = [TESTDATA / name for name in (REAL_NO_CRS, REAL_TO_TRUNCATE, *REAL_GRID_ORTHOS)]
    return [world.root, *(p for p in real if p.is_file())]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_bad_input_is_a_one_line_error(case: ErrorCase, world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = checksums(_used_inputs(world))
    result = invoke(*case.args(world, out))
    assert_one_line_error(result, case.problem)
    assert_nothing_written(out)
    assert checksums(_used_inputs(world)) == before


def test_truncated_real_tiff_is_a_one_line_error(
    world: World, truncated_real_tiff: Path, tmp_path: Path
) -> None:
    before = checksums(_used_inputs(world))
    for stage_args in (
        # --grid: the tiler reads every window (the plots lie elsewhere and would stop it early).
        ["tile", str(truncated_real_tiff), "--grid"],
        ["map", str(truncated_real_tiff), "--model", str(world.model)],
    ):
        out = tmp_path / stage_args[0]
        config = ["--config", str(world.config)] if stage_args[0] == "tile" else []
        result = invoke(*stage_args, *config, "--out", str(out))
        assert_one_line_error(result, "truncated.tif")
        assert "truncated or corrupt" in result.output
        if stage_args[0] == "tile":
            # The strips before the cut are tiled (complete PNGs, kept for a resumed run),
            # but no manifest claims a finished tiles folder.
            assert not (out / "tiles.parquet").exists() and not (out / "sources.json").exists()
            assert leftover_temporaries(out) == []
            _assert_complete_pngs(out)
        else:
            # Blocks mapped before the bad strip stay in the hidden checkpoint for a resumed
            # run; nothing is written under a final output name.
            finals = [p for p in out.iterdir() if p.is_file()]
            assert finals == [] and (out / f"{CHECKPOINT_PREFIX}truncated").is_dir(), finals
            assert [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)] == []
    assert checksums(_used_inputs(world)) == before


@pytest.mark.parametrize(
    "case_id", ["tile-no-crs", "map-missing-model", "config-unknown-key", "augment-missing-model"]
)
def test_debug_shows_the_traceback(case_id: str, world: World, tmp_path: Path) -> None:
    case = next(c for c in ERROR_CASES if c.id == case_id)
    result = invoke("--debug", *case.args(world, tmp_path / "out"))
    assert result.exit_code != 0
    assert isinstance(result.exception, SpurgeError), repr(result.exception)
    assert case.problem.lower() in str(result.exception).lower()


# ---------------------------------------------------------------------------------------------
# Odd but valid inputs: a correct result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileCase:
    id: str
    ortho: str
    plots: str
    tiles: int  # expected rows of tiles.parquet
    output_says: str = ""


TILE_CASES = [
    TileCase("uint8-rgb", "rgb", "good", N_PLOTS * TILES_PER_PLOT),
    TileCase("float32", "float32", "good", N_PLOTS * TILES_PER_PLOT),
    TileCase("uint16", "uint16", "good", N_PLOTS * TILES_PER_PLOT),
    # The alpha band hides the top-left plot: its four tiles are skipped as nodata.
    TileCase("rgba-alpha", "rgba", "good", (N_PLOTS - 1) * TILES_PER_PLOT, "mostly nodata"),
    TileCase("rgbn-4-band", "rgbn", "good", N_PLOTS * TILES_PER_PLOT),
    TileCase(
        "plots-crs-differs-from-ortho",
        "rgb",
        "wgs84",
        N_PLOTS * TILES_PER_PLOT,
        "reprojected from EPSG:4326 to EPSG:32612",
    ),
]


@pytest.mark.parametrize("case", TILE_CASES, ids=[c.id for c in TILE_CASES])
def test_odd_but_valid_orthos_tile_correctly(case: TileCase, world: World, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    before = checksums(_used_inputs(world))
    result = invoke(*_tile(case.ortho, case.plots)(world, out))
    assert result.exit_code == 0, result.output
    assert case.output_says in result.output
    manifest = gpd.read_parquet(out / "tiles.parquet")
    assert len(manifest) == case.tiles
    assert set(manifest["label"]) == {"absent", "present"}
    assert manifest.crs == CRS_UTM12N
    for rel in manifest["path"]:
        with Image.open(out / rel) as image:
            pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (32, 32, 3)
        # Scaled to 8 bits from the band percentiles: real contrast, not a flat or clipped tile.
        assert pixels.std() > 20 and 20 < pixels.mean() < 235
    assert leftover_temporaries(out) == []
    assert checksums(_used_inputs(world)) == before


def test_rgbn_tiles_use_the_rgb_bands_only(world: World, tmp_path: Path) -> None:
    """The near-infrared band of a 4-band ortho does not leak into the tiles."""
    for name in ("rgb", "rgbn"):
        assert invoke(*_tile(name)(world, tmp_path / name)).exit_code == 0
    for rel in gpd.read_parquet(tmp_path / "rgb" / "tiles.parquet")["path"]:
        a, b = (np.asarray(Image.open(tmp_path / name / rel)) for name in ("rgb", "rgbn"))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("real_ortho", "tiles", "skipped_as_nodata"),
    # rgb.tif's top-left grid tile is 0 in bands 1-3 and the file has no nodata value: an
    # untagged margin, skipped with a warning (issue 14 item 5).
    [("rgb.tif", 8, 0), ("615.tif", 3, 6)],
    ids=["real-4-band-uint8", "real-5-band-float32-with-nodata"],
)
def test_real_odd_orthos_tile_as_a_grid(
    real_ortho: str, tiles: int, skipped_as_nodata: int, world: World, tmp_path: Path
) -> None:
    """1.6 m grid tiles (73 and 45 px) over 261 x 284 and 161 x 177 px real orthos: 3 x 3."""
    out = tmp_path / "tiles"
    before = checksums(_used_inputs(world))
    result = invoke(*_tile_grid(real_ortho)(world, out))
    assert result.exit_code == 0, result.output
    manifest = gpd.read_parquet(out / "tiles.parquet")
    assert len(manifest) == tiles
    assert (f"Skipped {skipped_as_nodata} tile(s)" in result.output) == bool(skipped_as_nodata)
    black = "Warning: skipped 1 tile(s) that are 0 in every band"
    assert (black in result.output) == (real_ortho == "rgb.tif"), result.output
    # Each tile shows its own window: its mean colour is the window's, scaled to 8 bits with
    # the scaling recorded in sources.json (bands 1-3 only; nodata is black in both).
    source = json.loads((out / "sources.json").read_text())["sources"][0]
    scaling = BandScaling.from_dict(source["scaling"])
    assert scaling.bands == (1, 2, 3)
    with rasterio.open(world.testdata(real_ortho)) as ortho:
        for row in manifest.itertuples():
            with Image.open(out / row.path) as image:
                assert image.mode == "RGB" and image.size == (32, 32)
                tile = np.asarray(image, dtype=float)
            window = Window(row.col_off, row.row_off, row.width, row.height)
            expected = scaling.apply(ortho.read([1, 2, 3], window=window)).astype(float)
            assert tile.mean(axis=(0, 1)) == pytest.approx(expected.mean(axis=(1, 2)), abs=4)
    assert leftover_temporaries(out) == []
    assert checksums(_used_inputs(world)) == before


# ---------------------------------------------------------------------------------------------
# Kill -9 halfway, then resume
# ---------------------------------------------------------------------------------------------

THROTTLE = """\
import importlib, runpy, sys, time

owner = importlib.import_module({module!r})
for name in {owners!r}:
    owner = getattr(owner, name)
real = getattr(owner, {attr!r})


def throttled(*args, **kwargs):
    time.sleep({seconds!r})  # slow each unit of work so the test can kill mid-run
    return real(*args, **kwargs)


setattr(owner, {attr!r}, throttled)
sys.argv[0] = "spurge"
runpy.run_module("spurge", run_name="__main__", alter_sys=True)
"""


def _run_and_kill(
    tmp_path: Path, slow_down: str, args: list[str], first_output: Callable[[], bool]
) -> None:
    """Run ``python -m spurge ARGS`` (the package's ``__main__``) with the function
    ``slow_down`` ("module:Class.method" or "module:function") delayed 0.5 s per call, and
    SIGKILL it as soon as ``first_output()`` is true: some but not all work is done.
    """
    module, _, qualname = slow_down.partition(":")
    *owners, attr = qualname.split(".")
    script = tmp_path / "throttled_spurge.py"
    script.write_text(THROTTLE.format(module=module, owners=owners, attr=attr, seconds=0.5))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while not first_output():
            if process.poll() is not None:
                pytest.fail(f"finished before it could be killed: {process.stderr.read()!r}")
            if time.monotonic() > deadline:
                pytest.fail("no output appeared within 180 s")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _assert_complete_pngs(folder: Path) -> None:
    """Every PNG under its final name decodes completely (no half-written file)."""
    for png in folder.rglob("*.png"):
        if not png.name.startswith(TMP_PREFIX):
            with Image.open(png) as image:
                image.load()


def test_augment_killed_halfway_resumes_to_the_uninterrupted_result(
    world: World, tmp_path: Path
) -> None:
    tiles = world.tiles["augment"]
    before = checksums(_used_inputs(world))
    # real-guidance needs no class tokens: the kill lands in image generation, not in
    # textual inversion (token files are written whole, like everything else).
    args = ["augment", str(tiles), "--config", str(world.config), "--model", "tiny-random",
            "--method", "real-guidance", "--steps", "4", "--per-tile", "3",
            "--batch-size", "2"]  # fmt: skip
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert invoke(*args, "--out", str(clean)).exit_code == 0

    def some_images() -> bool:
        return any(p for p in killed.glob("images/*/*.png") if not p.name.startswith(TMP_PREFIX))

    _run_and_kill(
        tmp_path,
        "spurge.augment.generate:BatchSampler.generate",
        [*args, "--out", str(killed)],
        some_images,
    )
    expected = pd.read_parquet(clean / "synthetic.parquet")
    done = [p for p in killed.glob("images/*/*.png") if not p.name.startswith(TMP_PREFIX)]
    assert 0 < len(done) < len(expected), "killed before the first or after the last image"
    _assert_complete_pngs(killed)

    resumed = invoke(*args, "--out", str(killed))
    assert resumed.exit_code == 0, resumed.output
    pd.testing.assert_frame_equal(pd.read_parquet(killed / "synthetic.parquet"), expected)
    for rel in expected["path"]:
        a = np.asarray(Image.open(killed / rel), dtype=int)
        b = np.asarray(Image.open(clean / rel), dtype=int)
        # Resumed images are sampled in other batches than the clean run's: float noise only.
        assert np.abs(a - b).max() <= 2
    assert leftover_temporaries(killed) == []
    assert checksums(_used_inputs(world)) == before


def test_map_killed_halfway_resumes_to_the_uninterrupted_result(
    world: World, tmp_path: Path
) -> None:
    # 512 px at 32 px windows and a 16 px stride: 31 x 31 windows, 2 x 2 blocks of 16 x 16.
    size = 512
    rgb = np.tile(_texture(5), (1, 2, 2)).astype(np.uint8)
    (tmp_path / "inputs").mkdir()
    ortho = write_ortho(tmp_path / "inputs" / "site.tif", rgb, size_px=size)
    before = checksums([*_used_inputs(world), ortho])
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = [str(ortho), "--model", str(world.model)]
    assert invoke("map", *args, "--out", str(clean)).exit_code == 0
    checkpoint = killed / f"{CHECKPOINT_PREFIX}site"

    _run_and_kill(
        tmp_path,
        "spurge.mapping.run:classify_block",
        ["map", *args, "--out", str(killed)],
        lambda: any(checkpoint.glob("block_*.npz")),
    )
    finals = [p for p in killed.iterdir() if p.is_file()]
    assert finals == [], f"final outputs written before the map was finished: {finals}"
    assert 0 < len(list(checkpoint.glob("block_*.npz"))) < 4

    resumed = invoke("map", *args, "--out", str(killed))
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from a previous run" in resumed.output
    for name in ("site_prob.tif", "site_presence.tif", "site_uncertainty.tif", "site.gpkg"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    assert leftover_temporaries(killed) == []
    assert checksums([*_used_inputs(world), ortho]) == before
