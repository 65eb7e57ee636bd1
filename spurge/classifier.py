"""The tile classifier and its on-disk contract (``model.safetensors`` + ``model.json``).

``model.json`` (a :class:`ModelCard`) holds everything ``spurge map`` needs to use the
weights without guessing: backbone, classes, normalisation, input size, tile size in pixels
and metres, and the species config the model was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from spurge.config import SpeciesConfig
from spurge.errors import ModelError
from spurge.io.atomic import atomic_path, sha256_file, write_text_atomic

MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
CARD_VERSION = 1


class ModelCard(BaseModel):
    """Contents of ``model.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = CARD_VERSION
    backbone: str
    class_names: list[str] = Field(min_length=2)
    positive_class: str
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    input_size: int = Field(gt=0, description="Side in px of the network input.")
    tile_size_px: int = Field(gt=0)
    tile_size_m: float = Field(gt=0)
    gsd_m: float = Field(gt=0)
    mode: Literal["linear", "finetune"] = "linear"
    config: dict[str, Any]
    data_hashes: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str = ""
    training: dict[str, Any] = Field(default_factory=dict)

    def species_config(self) -> SpeciesConfig:
        return SpeciesConfig.model_validate(self.config)

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)


@dataclass(frozen=True)
class BackboneSpec:
    """A feature extractor, the size of its output and the input it expects."""

    module: nn.Module
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int


#: name -> builder(pretrained) for every backbone spurge knows.
BACKBONES: dict[str, Callable[[bool], BackboneSpec]] = {}


def register_backbone(name: str) -> Callable[[Callable[[bool], BackboneSpec]], Callable]:
    def decorator(builder: Callable[[bool], BackboneSpec]) -> Callable[[bool], BackboneSpec]:
        BACKBONES[name] = builder
        return builder

    return decorator


@register_backbone("random-small")
def _random_small(pretrained: bool) -> BackboneSpec:
    """A tiny randomly initialised CNN for tests and quick experiments (no pretraining)."""
    del pretrained
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return BackboneSpec(module, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 64)


def build_backbone(name: str, pretrained: bool = True) -> BackboneSpec:
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained)


class TileClassifier(nn.Module):
    """Backbone + linear head; takes normalised float tensors (N, 3, S, S)."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(
    backbone: str, num_classes: int, pretrained: bool = True
) -> tuple[TileClassifier, BackboneSpec]:
    spec = build_backbone(backbone, pretrained)
    return TileClassifier(spec.module, spec.num_features, num_classes), spec


def preprocess(images: np.ndarray | torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 (N, H, W, 3) tiles -> normalised float (N, 3, S, S) at the card's input size."""
    batch = torch.as_tensor(images)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 tiles, got shape {tuple(batch.shape)}")
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if batch.shape[-2:] != (card.input_size, card.input_size):
        batch = nn.functional.interpolate(
            batch,
            size=(card.input_size, card.input_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    return (batch - mean) / std


@torch.no_grad()
def predict_proba(
    model: TileClassifier, card: ModelCard, images: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class probabilities (N, C) for uint8 (N, H, W, 3) tiles."""
    model.eval()
    logits = model(preprocess(images, card).to(device))
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def save_model(model: TileClassifier, card: ModelCard, run_dir: str | Path) -> Path:
    """Write weights then card, each atomically; the card records the weights' hash."""
    run_dir = Path(run_dir)
    weights = run_dir / MODEL_WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"backbone": card.backbone})
    card = card.model_copy(update={"weights_sha256": sha256_file(weights)})
    write_text_atomic(run_dir / MODEL_CARD, card.model_dump_json(indent=2))
    return run_dir / MODEL_CARD


def load_card(run_dir: str | Path) -> ModelCard:
    path = Path(run_dir) / MODEL_CARD
    if not path.is_file():
        raise ModelError("no model.json here; train a model with `spurge train` first", path)
    try:
        return ModelCard.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError("model.json is not valid JSON (corrupt or truncated)", path) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ModelError(
            f"model.json does not match the model contract: {key}: {first['msg']}", path
        ) from exc


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[TileClassifier, ModelCard]:
    """Load a trained classifier; every mismatch is a one-line :class:`ModelError`."""
    run_dir = Path(run_dir)
    card = load_card(run_dir)
    weights = run_dir / MODEL_WEIGHTS
    if not weights.is_file():
        raise ModelError("model weights missing", weights)
    if card.weights_sha256 and sha256_file(weights) != card.weights_sha256:
        raise ModelError("weights do not match the checksum in model.json (corrupt?)", weights)
    model, _ = build_classifier(card.backbone, len(card.class_names), pretrained=False)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as exc:
        problem = " ".join(str(exc).split())[:160]
        raise ModelError(f"cannot load weights into {card.backbone}: {problem}", weights) from exc
    return model.to(device).eval(), card
