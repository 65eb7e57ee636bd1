"""Optional quality filter for synthetic images (ALIA / Real Guidance style).

``clip`` keeps an image when the cosine similarity between its CLIP image embedding and the
class's text prompt is at least a threshold. The CLIP model is a transformers ``CLIPModel``
from a local folder or a hub id already in the cache; without one it is a one-line error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spurge.errors import ConfigError, ModelError

FILTERS = ("clip",)
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_CLIP_THRESHOLD = 0.2


@dataclass(frozen=True)
class FilterSettings:
    """Which quality filter ``augment`` applies to new images, and its model and threshold."""

    name: str = "clip"
    model: str = DEFAULT_CLIP_MODEL
    threshold: float = DEFAULT_CLIP_THRESHOLD

    def __post_init__(self) -> None:
        if self.name not in FILTERS:
            raise ConfigError(f"unknown filter {self.name!r}; choose one of {', '.join(FILTERS)}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"CLIP threshold {self.threshold} is out of range [-1, 1]")


class ClipFilter:
    """Scores images against text with CLIP; ``keep`` applies the threshold."""

    def __init__(
        self,
        model: str = DEFAULT_CLIP_MODEL,
        threshold: float = DEFAULT_CLIP_THRESHOLD,
        device: torch.device | str = "cpu",
    ) -> None:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        if not -1.0 <= threshold <= 1.0:
            raise ModelError(f"CLIP threshold {threshold} is out of range [-1, 1]")
        self.threshold = threshold
        self.device = torch.device(device)
        try:
            clip: Any = CLIPModel.from_pretrained(model, local_files_only=True)
            self.model = clip.to(self.device)
            self.tokenizer = CLIPTokenizer.from_pretrained(model, local_files_only=True)
            self.processor = CLIPImageProcessor.from_pretrained(model, local_files_only=True)
        except Exception as exc:  # not downloaded, not a CLIP folder...
            raise ModelError(
                f"CLIP model for --filter clip is not available ({type(exc).__name__}); pass "
                "--clip-model with a local transformers CLIP folder",
                model,
            ) from exc
        self.model.eval()
        self.model_id = model
        folder = Path(model)
        config = folder / "config.json"
        basis = config.read_bytes() if config.is_file() else model.encode()
        self.identity = f"clip:{hashlib.sha256(basis).hexdigest()[:12]}:{threshold:g}"
        self._text: dict[str, torch.Tensor] = {}

    def _text_embedding(self, text: str) -> torch.Tensor:
        if text not in self._text:
            ids = self.tokenizer([text], padding=True, return_tensors="pt").to(self.device)
            emb = self.model.get_text_features(**ids)
            emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
            self._text[text] = torch.nn.functional.normalize(emb.float(), dim=-1)[0]
        return self._text[text]

    @torch.no_grad()
    def scores(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Cosine similarity of each uint8 HxWx3 image with its text."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        emb = self.model.get_image_features(pixel_values=pixels.to(self.device))
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        text = torch.stack([self._text_embedding(t) for t in texts])
        return (emb * text).sum(dim=-1).cpu().numpy()

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.threshold


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Save a miniature random-weight CLIP (real tokenizer) for tests of the filter path."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from spurge.augment.models import build_clip_tokenizer

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = CLIPConfig(
            text_config={
                "vocab_size": 49408,
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 77,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 49407,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )
        model = CLIPModel(config)
    finally:
        torch.random.set_rng_state(state)
    folder = Path(folder)
    model.save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder
