"""Diffusion augmentation (DA-Fusion and baselines): tokens, generation, synthetic store.

Names are imported on first use (PEP 562), so ``spurge.augment.methods`` (the method
registry, read by the CLI) loads without torch and diffusers, and ``spurge.augment.models``,
``generate`` and ``textual_inversion`` work on a GPU machine that has torch, diffusers and
transformers but not the geospatial stack (benchmarks/gpu_augment_check.py relies on it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_STRENGTHS": "spurge.augment.generate",
    "GenerationSettings": "spurge.augment.generate",
    "METHODS": "spurge.augment.methods",
    "Method": "spurge.augment.methods",
    "get_method": "spurge.augment.methods",
    "register": "spurge.augment.methods",
    "DEFAULT_MODEL": "spurge.augment.models",
    "TINY_RANDOM": "spurge.augment.models",
    "load_model": "spurge.augment.models",
    "FilterSettings": "spurge.augment.filters",
    "AugmentResult": "spurge.augment.run",
    "augment": "spurge.augment.run",
    "TokenResult": "spurge.augment.textual_inversion",
    "TokenSettings": "spurge.augment.textual_inversion",
    "load_tokens": "spurge.augment.textual_inversion",
    "train_tokens": "spurge.augment.textual_inversion",
    "SYNTHETIC_COLUMNS": "spurge.io.synthetic",
    "read_synthetic_manifest": "spurge.io.synthetic",
    "synthetic_image_path": "spurge.io.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
