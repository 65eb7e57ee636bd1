"""A cheap, honest model for the ``spurge map`` tests (test_map.py, test_browser.py).

The model is a fixed colour rule registered as a test-only backbone (``test-colour``): the
share of a window's pixels that are bright and yellow-green (green well above blue and above
red, i.e. spurge bracts rather than grass or yellow lookalike forbs), through a fixed linear
head. It finds the planted spurge patches of ``spurge.synthetic`` well enough to check that a
map puts presence where the patches are, without waiting for the train stage.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import make_tiny_config
from torch import nn

from spurge.classifier import (
    BackboneSpec,
    ModelCard,
    build_classifier,
    register_backbone,
    save_model,
)
from spurge.config import SpeciesConfig

TINY_CONFIG = make_tiny_config()
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


def make_model(run_dir: Path, config: SpeciesConfig | None = None, strength: float = 1.0) -> Path:
    """Save the colour-rule model; ``strength=0`` makes one that always says 50/50."""
    config = config or TINY_CONFIG
    model, spec = build_classifier("test-colour", 2)
    with torch.no_grad():
        # P(present) crosses 0.5 where 6 % of the window looks like spurge bracts.
        model.head.weight.copy_(torch.tensor([[-40.0], [40.0]]) * strength)
        model.head.bias.copy_(torch.tensor([2.4, -2.4]) * strength)
    save_model(model, ModelCard.for_classifier("test-colour", spec, config), run_dir)
    return run_dir
