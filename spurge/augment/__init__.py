"""Diffusion augmentation (DA-Fusion and baselines): tokens, generation, synthetic store.

Names are imported lazily (PEP 562) so that ``spurge.augment.models``, ``generate`` and
``textual_inversion`` can be used on a GPU machine that has torch, diffusers and transformers
but not the geospatial stack (benchmarks/gpu_augment_check.py relies on it).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_MODEL": "spurge.augment.models",
    "DEFAULT_STRENGTHS": "spurge.augment.generate",
    "METHODS": "spurge.augment.generate",
    "SYNTHETIC_COLUMNS": "spurge.io.synthetic",
    "TINY_RANDOM": "spurge.augment.models",
    "AugmentResult": "spurge.augment.run",
    "GenerationSettings": "spurge.augment.generate",
    "TokenResult": "spurge.augment.textual_inversion",
    "TokenSettings": "spurge.augment.textual_inversion",
    "augment": "spurge.augment.run",
    "load_model": "spurge.augment.models",
    "load_tokens": "spurge.augment.textual_inversion",
    "read_synthetic_manifest": "spurge.io.synthetic",
    "synthetic_image_path": "spurge.io.synthetic",
    "train_tokens": "spurge.augment.textual_inversion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spurge.augment' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
