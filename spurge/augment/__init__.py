"""Diffusion augmentation (DA-Fusion and baselines): tokens, generation, synthetic store."""

from spurge.augment.generate import DEFAULT_STRENGTHS, METHODS, GenerationSettings
from spurge.augment.models import DEFAULT_MODEL, TINY_RANDOM, load_model
from spurge.augment.run import AugmentResult, augment
from spurge.augment.textual_inversion import TokenResult, TokenSettings, load_tokens, train_tokens
from spurge.io.synthetic import (
    SYNTHETIC_COLUMNS,
    read_synthetic_manifest,
    synthetic_image_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_STRENGTHS",
    "METHODS",
    "SYNTHETIC_COLUMNS",
    "TINY_RANDOM",
    "AugmentResult",
    "GenerationSettings",
    "TokenResult",
    "TokenSettings",
    "augment",
    "load_model",
    "load_tokens",
    "read_synthetic_manifest",
    "synthetic_image_path",
    "train_tokens",
]
