"""One set of fixture builders for the whole suite, each writing through the real I/O.

- :func:`tiny_config`: a leafy-spurge-like species config with 32 px tiles at 5 cm.
- :func:`make_small_tiles`: a handful of labelled tiles (augment tests).
- :func:`make_site_tiles`: sites x splits x plots x 2 x 2 quarters (train / evaluate tests).
- :func:`make_synthetic_store`: a synthetic store written by ``spurge.io.synthetic``.
- :func:`make_colour_model`: a trained-looking run whose backbone is a fixed colour rule.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from PIL import Image
from shapely.geometry import box
from torch import nn

from spurge.classifier import (
    BackboneSpec,
    ModelCard,
    build_classifier,
    register_backbone,
    save_model,
)
from spurge.config import SpeciesConfig
from spurge.io.synthetic import write_synthetic_manifest
from spurge.io.tiles import write_tile_manifest

SIDE = 32


def tiny_config(**overrides: object) -> SpeciesConfig:
    """A leafy-spurge-like config with 32 px tiles at 5 cm: plots of 2 x 2 quarters (64 px),
    fast to test. ``overrides`` replace any key, e.g. ``tiny_config(bands=[1, 2, 4])``.
    """
    values: dict[str, object] = {
        "species": "leafy spurge",
        "classes": [
            {"name": "absent", "initializer": "grassland"},
            {
                "name": "present",
                "initializer": "flowers",
                "description": "leafy spurge with yellow bracts",
            },
        ],
        "positive_class": "present",
        "context_prompts": ["grassland", "snow", "mountain"],
        "plot_size_m": 3.2,
        "tile_size_px": SIDE,
        "quarters": True,
        "gsd_m": 0.05,
    }
    values.update(overrides)
    return SpeciesConfig.model_validate(values)


def make_small_tiles(
    folder: Path, per_class: int = 2, size: int = 64, extra: list[dict] | None = None, seed: int = 0
) -> Path:
    """``per_class`` labelled train tiles per class plus one val and one unlabelled tile."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    specs = [("absent", "train")] * per_class + [("present", "train")] * per_class
    specs += [("present", "val"), (None, "unlabelled")]
    for k, (label, split) in enumerate(specs):
        tile_id = f"site_000_p{k:02d}_q0"
        rel = f"images/{tile_id}.png"
        base = np.array([60, 140, 50] if label != "present" else [190, 200, 40], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / rel)
        x0, y0 = 500000.0 + k * size * 0.05, 5000000.0
        rows.append(
            {
                "tile_id": tile_id,
                "path": rel,
                "label": label,
                "site": "site_000",
                "plot_id": f"p{k:02d}",
                "split": split,
                "source": "site_000.tif",
                "source_sha256": "0" * 64,
                "row_off": 0,
                "col_off": k * size,
                "height": size,
                "width": size,
                "crs": "EPSG:32612",
                "gsd_m": 0.05,
                "geometry": box(x0, y0 - size * 0.05, x0 + size * 0.05, y0),
            }
        )
    for row in extra or []:
        rows.append(row)
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32612")
    write_tile_manifest(frame, folder)
    return folder


def toy_tile(label: str, rng: np.random.Generator) -> np.ndarray:
    """Green grass noise; 'present' tiles carry yellow blobs (easy but not trivial)."""
    base = np.array([90, 120, 60], dtype=np.float32) * rng.uniform(0.8, 1.2)
    image = base + rng.normal(0, 18, (SIDE, SIDE, 3))
    if label == "present":
        for _ in range(int(rng.integers(2, 5))):
            r, c = rng.integers(0, SIDE, 2)
            rr, cc = np.ogrid[:SIDE, :SIDE]
            disc = (rr - r) ** 2 + (cc - c) ** 2 <= rng.integers(9, 30)
            image[disc] = np.array([200, 205, 60]) + rng.normal(0, 10, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_site_tiles(
    out: Path,
    plots_per_class: dict[str, int] | None = None,
    splits: tuple[str, ...] = ("train", "train", "val", "test"),
    seed: int = 0,
) -> Path:
    """A tiles folder: one site per split entry, 2x2 quarter tiles per plot, PNGs + manifest."""
    plots_per_class = plots_per_class or {"absent": 3, "present": 3}
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for s, split in enumerate(splits):
        site = f"site_{s}"
        for label, n_plots in plots_per_class.items():
            for p in range(n_plots):
                plot_id = f"{site}_{label}_{p}"
                for q in range(4):
                    tile_id = f"{plot_id}_q{q}"
                    rel = f"images/{tile_id}.png"
                    Image.fromarray(toy_tile(label, rng)).save(out / rel)
                    x0 = 1000.0 * s + 10 * p + 1.6 * (q % 2)
                    y0 = 5000.0 + 1.6 * (q // 2) + (100 if label == "present" else 0)
                    rows.append(
                        {
                            "tile_id": tile_id,
                            "path": rel,
                            "label": label,
                            "site": site,
                            "plot_id": plot_id,
                            "split": split,
                            "source": f"{site}.tif",
                            "source_sha256": "0" * 64,
                            "row_off": 32 * (q // 2),
                            "col_off": 32 * (q % 2),
                            "height": SIDE,
                            "width": SIDE,
                            "crs": "EPSG:32612",
                            "gsd_m": 0.05,
                            "geometry": box(x0, y0, x0 + 1.6, y0 + 1.6),
                        }
                    )
    write_tile_manifest(gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32612"), out)
    return out


def make_synthetic_store(
    out: Path,
    tiles_dir: Path,
    per_tile: int = 2,
    method: str = "da-fusion",
    seed: int = 0,
    tile_ids: list[str] | None = None,
    config_fingerprint: str | None = None,
) -> Path:
    """A synthetic store (jittered toy copies of the train tiles) written by the real writer."""
    tiles = gpd.read_parquet(tiles_dir / "tiles.parquet")
    tiles = tiles[tiles["split"] == "train"]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for _, tile in tiles.iterrows():
        if tile_ids is not None and tile["tile_id"] not in tile_ids:
            continue
        for k in range(per_tile):
            image_id = f"{tile['tile_id']}_s{k}"
            rel = f"images/{image_id}.png"
            Image.fromarray(toy_tile(tile["label"], rng)).save(out / rel)
            rows.append(
                {
                    "image_id": image_id,
                    "path": rel,
                    "label": tile["label"],
                    "source_tile_id": tile["tile_id"],
                    "method": method,
                    "prompt": "a photo",
                    "context": "grassland",
                    "strength": 0.5,
                    "seed": k,
                    "model_id": "tiny-random",
                    "model_hash": "x",
                    "token_hash": "y",
                    "steps": 2,
                    "guidance": 7.5,
                }
            )
    write_synthetic_manifest(pd.DataFrame(rows), out, config_fingerprint)
    return out


# ---------------------------------------------------------------------------------------------
# A cheap, honest model for the map tests: a fixed colour rule registered as the test-only
# backbone ``test-colour``. It scores the share of a window's pixels that are bright and
# yellow-green (spurge bracts rather than grass or yellow look-alike forbs) through a fixed
# linear head, which finds the planted patches of ``spurge.synthetic`` without training.
# ---------------------------------------------------------------------------------------------

TINY_CONFIG = tiny_config()
TILE_PX = TINY_CONFIG.tile_size_px
GSD = TINY_CONFIG.gsd_m


class SpurgeColour(nn.Module):
    """Share of pixels that look like spurge bracts; inputs are RGB in [0, 1] (mean 0, std 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        ratio = (g - b) / (g + 1e-3)
        score = torch.sigmoid(40 * (ratio - 0.5))
        score = score * torch.sigmoid(40 * (g - 0.56)) * torch.sigmoid(40 * (g - r))
        return score.mean(dim=(1, 2))[:, None]


@register_backbone("test-colour")
def _test_colour(pretrained: bool) -> BackboneSpec:
    return BackboneSpec(SpurgeColour(), 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), TILE_PX)


def make_colour_model(
    run_dir: Path,
    config: SpeciesConfig | None = None,
    strength: float = 1.0,
    tiles_dir: Path | None = None,
) -> Path:
    """Save the colour-rule model; ``strength=0`` makes one that always says 50/50;
    ``tiles_dir`` is recorded in the card as the tiles it was trained on.
    """
    config = config or TINY_CONFIG
    model, spec = build_classifier("test-colour", 2)
    with torch.no_grad():
        # P(present) crosses 0.5 where 6 % of the window looks like spurge bracts.
        model.head.weight.copy_(torch.tensor([[-40.0], [40.0]]) * strength)
        model.head.bias.copy_(torch.tensor([2.4, -2.4]) * strength)
    card = ModelCard.for_classifier("test-colour", spec, config, tiles_dir=tiles_dir)
    save_model(model, card, run_dir)
    return run_dir


# A dense-capable twin of ``test-colour`` (issue 12): the same per-pixel colour score as a
# feature map, average-pooled by 8 px then globally, so the backbone can run fully
# convolutionally (feature stride 8 px) and a window's score is the mean of its features.
class SpurgeColourMap(nn.Module):
    """Per-pixel spurge-bract score (N, 1, H, W) of ``SpurgeColour``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        ratio = (g - b) / (g + 1e-3)
        score = torch.sigmoid(40 * (ratio - 0.5))
        score = score * torch.sigmoid(40 * (g - 0.56)) * torch.sigmoid(40 * (g - r))
        return score[:, None]


@register_backbone("test-colour-conv")
def _test_colour_conv(pretrained: bool) -> BackboneSpec:
    module = nn.Sequential(
        SpurgeColourMap(), nn.AvgPool2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return BackboneSpec(module, 1, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), TILE_PX)


def make_dense_colour_model(run_dir: Path, config: SpeciesConfig | None = None) -> Path:
    """The colour-rule model on the dense-capable ``test-colour-conv`` backbone."""
    config = config or TINY_CONFIG
    model, spec = build_classifier("test-colour-conv", 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[-40.0], [40.0]]))
        model.head.bias.copy_(torch.tensor([2.4, -2.4]))
    save_model(model, ModelCard.for_classifier("test-colour-conv", spec, config), run_dir)
    return run_dir
