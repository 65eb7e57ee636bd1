"""The one preprocessing path from an 8-bit RGB tile to the classifier's input tensor.

Training (``spurge train``: tile PNGs) and mapping (``spurge map``: windows read from the
orthomosaic) both call :class:`TileTransform`, and the transform a model was trained with is
stored in its ``model.json``, so a model sees at map time exactly the tensors it saw in
training. The steps, in order:

1. resize (3, H, W) uint8 to ``size`` x ``size`` with antialiased bilinear interpolation
   (``align_corners=False``); a tile already at ``size`` is left untouched;
2. round the resized values half-to-even and clamp them to 0..255 (8 bit), because training
   caches its decoded tiles as uint8 and a map window must match them bit for bit;
3. scale to [0, 1] and normalise with the backbone's ``mean`` and ``std``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class TileTransform(BaseModel):
    """Resize size, 8-bit rounding rule, normalisation and interpolation of a model's input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(gt=0, description="Side in px of the network input.")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear-antialias"] = "bilinear-antialias"
    rounding: Literal["uint8-half-even"] = "uint8-half-even"

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) or (N, 3, H, W) -> uint8 at ``size`` (steps 1 and 2)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 tiles, got {images.dtype}")
        if images.shape[-2:] == (self.size, self.size):
            return images
        batch = images[None] if images.ndim == 3 else images
        resized = nn.functional.interpolate(
            batch.float(),
            size=(self.size, self.size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        out = resized.round_().clamp_(0, 255).to(torch.uint8)
        return out[0] if images.ndim == 3 else out

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, size, size) -> normalised float32 (step 3), on ``batch``'s device."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) tiles -> normalised float (N, 3, size, size): all three steps."""
        batch = torch.as_tensor(images)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) uint8 tiles, got shape {tuple(batch.shape)}")
        return self.normalise(self.resize(batch.permute(0, 3, 1, 2)))
