"""The tile classifier and its on-disk contract (``model.safetensors`` + ``model.json``).

``model.json`` (a :class:`ModelCard`) holds everything ``spurge map`` needs to use the
weights without guessing: backbone, classes, the input :class:`~spurge.transform.TileTransform`
(size, 8-bit rounding, normalisation, interpolation), tile size in pixels and metres, and the
species config the model was trained with. A card is validated in full when it is loaded
(classes, positive class, config, tile geometry), and the weights when they are loaded, so a
bad run folder fails with one line naming the file before any map is computed.

Backbones live in :mod:`spurge.backbones`; their public names are re-exported here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spurge.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    build_backbone,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state,
    register_backbone,
)
from spurge.config import SpeciesConfig
from spurge.errors import ModelError, one_line
from spurge.io.atomic import atomic_path, sha256_file, write_text_atomic
from spurge.transform import TileTransform

__all__ = [
    "BACKBONES",
    "CARD_VERSION",
    "DEFAULT_BACKBONE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_CARD",
    "MODEL_WEIGHTS",
    "BackboneSpec",
    "ModelCard",
    "TileClassifier",
    "TileTransform",
    "build_backbone",
    "build_classifier",
    "efficientnet_lite0_weights_path",
    "load_card",
    "load_efficientnet_lite0_state",
    "load_model",
    "predict_proba",
    "preprocess",
    "register_backbone",
    "save_model",
]

MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
#: 2: the input transform is one ``transform`` object (version 1 had mean/std/input_size).
CARD_VERSION = 2


class ModelCard(BaseModel):
    """Contents of ``model.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = CARD_VERSION
    backbone: str
    class_names: list[str] = Field(min_length=2)
    positive_class: str
    transform: TileTransform
    tile_size_px: int = Field(gt=0)
    tile_size_m: float = Field(gt=0)
    gsd_m: float = Field(gt=0)
    mode: Literal["linear", "finetune"] = "linear"
    config: dict[str, Any]
    data_hashes: dict[str, str] = Field(default_factory=dict)
    weights_sha256: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    #: Absolute tiles folder the model was trained on: ``spurge map`` reuses the band scaling
    #: its ``sources.json`` recorded for an ortho that was tiled (None: compute it).
    tiles_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _version_1(cls, data: Any) -> Any:
        """Read a version-1 card: its top-level mean/std/input_size become the transform.

        Version-1 models were trained on tiles rounded to 8 bit after resizing, which is the
        transform's rounding rule, so they now map with the preprocessing they trained with.
        """
        if isinstance(data, dict) and "transform" not in data and "input_size" in data:
            data = dict(data)
            data["transform"] = {
                "size": data.pop("input_size"),
                "mean": data.pop("mean", None),
                "std": data.pop("std", None),
            }
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names {self.class_names} repeat a class")
        if self.positive_class not in self.class_names:
            raise ValueError(
                f"positive_class {self.positive_class!r} is not among class_names "
                f"{self.class_names}"
            )
        if not math.isclose(self.tile_size_m, self.tile_size_px * self.gsd_m, rel_tol=1e-6):
            raise ValueError(
                f"tile_size_m {self.tile_size_m} is not tile_size_px x gsd_m "
                f"({self.tile_size_px} x {self.gsd_m} = {self.tile_size_px * self.gsd_m:g})"
            )
        try:
            SpeciesConfig.model_validate(self.config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(["config", *(str(p) for p in first["loc"])])
            raise ValueError(f"{where}: {first['msg']}") from None
        return self

    @classmethod
    def for_classifier(
        cls,
        backbone: str,
        spec: BackboneSpec,
        config: SpeciesConfig,
        *,
        mode: Literal["linear", "finetune"] = "linear",
        data_hashes: dict[str, str] | None = None,
        training: dict[str, Any] | None = None,
        tiles_dir: str | Path | None = None,
    ) -> ModelCard:
        """The card of a classifier built on ``spec`` for ``config``.

        The input transform comes from the backbone, classes and tile geometry from the
        species config, so no caller can let the two drift apart.
        """
        return cls(
            backbone=backbone,
            class_names=config.class_names,
            positive_class=config.positive_class,
            transform=spec.transform,
            tile_size_px=config.tile_size_px,
            tile_size_m=config.tile_size_px * config.gsd_m,
            gsd_m=config.gsd_m,
            mode=mode,
            config=config.model_dump(mode="json"),
            data_hashes=data_hashes or {},
            training=training or {},
            tiles_dir=None if tiles_dir is None else str(Path(tiles_dir).resolve()),
        )

    def species_config(self) -> SpeciesConfig:
        return SpeciesConfig.model_validate(self.config)

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def input_size(self) -> int:
        return self.transform.size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.transform.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.transform.std


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
    """A fresh classifier (backbone + linear head for ``num_classes``) and its spec."""
    spec = build_backbone(backbone, pretrained)
    return TileClassifier(spec.module, spec.num_features, num_classes), spec


def preprocess(images: np.ndarray | torch.Tensor, card: ModelCard) -> torch.Tensor:
    """uint8 (N, H, W, 3) tiles -> the card's normalised float (N, 3, S, S) input.

    The same :class:`~spurge.transform.TileTransform` training applied, so map windows and
    training tiles become identical tensors.
    """
    return card.transform(images)


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
    """Read and fully validate ``model.json``; every problem is a one-line ModelError."""
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
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ModelError(
            f"model.json does not match the model contract: {f'{key}: ' if key else ''}{message}",
            path,
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
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"cannot read the weights (truncated?): {one_line(exc, 160)}", weights
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"cannot load weights into {card.backbone}: {one_line(exc, 160)}", weights
        ) from exc
    return model.to(device).eval(), card
