"""A real-size Stable Diffusion 1.5 with RANDOM weights, saved the three ways users have SD.

No checkpoint can be downloaded in tests or benchmarks, but speed, memory and every loading
path depend on the architecture, not on the weights' values. :func:`build_sd15_pipeline`
builds SD 1.5's UNet (~860 M parameters), KL VAE and CLIP ViT-L/14 text encoder from the
configs shipped in ``spurge/resources/sd15`` with random weights, and the real CLIP tokenizer.
It saves them as

- a diffusers folder (:func:`save_diffusers_folder`);
- one ``.safetensors`` or ``.ckpt`` in the original CompVis/LDM key layout, like the files
  people download (:func:`save_single_file`);
- a Hugging Face hub cache entry, loadable by repo id with ``HF_HUB_OFFLINE=1``
  (:func:`save_hub_cache`).

Every form records that its weights are random (``spurge_random_weights``), and
``load_model`` says so in its notes: images from it are noise. Write them outside the
repository (/tmp); SD 1.5 is ~4 GB in float32, ~2 GB in float16.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from spurge.augment.single_file import ldm_state_dict, sd15_component_config
from spurge.io.atomic import atomic_path, write_text_atomic

#: Marker file in a diffusers folder / metadata key in a single file: the weights are random.
RANDOM_MARKER = "spurge_random_weights.json"
RANDOM_METADATA_KEY = "spurge_random_weights"


def build_sd15_pipeline(
    seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """SD 1.5's architecture with random weights as a ``StableDiffusionImg2ImgPipeline``.

    Built directly on ``device`` (so a GPU run never holds a CPU copy); deterministic for a
    seed on CPU.
    """
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from spurge.augment.models import build_clip_tokenizer

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(sd15_component_config("unet"))
            vae = AutoencoderKL.from_config(sd15_component_config("vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig(**sd15_component_config("text_encoder")))
    finally:
        torch.random.set_rng_state(state)
    if dtype != torch.float32:
        _cast_quietly((unet, vae, text_encoder), dtype)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(sd15_component_config("scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # untyped mixin
    return pipe


def _cast_quietly(modules, dtype: torch.dtype) -> None:
    """Cast freshly built modules; diffusers' "modules to keep in float32: []" warning is a
    false alarm here (SD 1.5's UNet and VAE list none).
    """
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for module in modules:
            module.to(dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _marker_text(seed: int) -> str:
    return json.dumps(
        {"random_weights": True, "architecture": "sd15", "seed": seed, "built_by": "spurge"}
    )


def save_diffusers_folder(pipe, folder: str | Path, seed: int = 0) -> Path:
    """The pipeline as a diffusers folder (safetensors weights), marked as random-weight."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_text_atomic(Path(tmp) / RANDOM_MARKER, _marker_text(seed))
    return folder


def save_single_file(
    pipe, path: str | Path, dtype: torch.dtype | None = None, seed: int = 0
) -> Path:
    """The pipeline as one checkpoint in the LDM key layout (``.safetensors`` or ``.ckpt``).

    ``dtype=torch.float16`` writes an fp16-only file, as many downloads are.
    """
    path = Path(path)
    state = ldm_state_dict(pipe.unet, pipe.vae, pipe.text_encoder)
    state = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={RANDOM_METADATA_KEY: _marker_text(seed)})
        elif path.suffix == ".ckpt":
            torch.save({"state_dict": state, RANDOM_METADATA_KEY: _marker_text(seed)}, str(tmp))
        else:
            raise ValueError(f"single file must end in .safetensors or .ckpt: {path}")
    return path


def save_hub_cache(
    pipe, cache_dir: str | Path, repo_id: str = "spurge-test/sd15-random", seed: int = 0
) -> Path:
    """The pipeline as a hub cache entry ``models--org--name/snapshots/<rev>`` under cache_dir.

    Load it with ``HF_HUB_CACHE=cache_dir HF_HUB_OFFLINE=1 ... --model <repo_id>``. Returns
    the snapshot folder.
    """
    cache_dir = Path(cache_dir)
    entry = cache_dir / ("models--" + repo_id.replace("/", "--"))
    revision = hashlib.sha1(f"{repo_id}:{seed}".encode()).hexdigest()
    snapshot = save_diffusers_folder(pipe, entry / "snapshots" / revision, seed=seed)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    write_text_atomic(entry / "refs" / "main", revision)
    return snapshot


def is_random_folder(folder: Path) -> bool:
    return (folder / RANDOM_MARKER).is_file()


def is_random_single_file(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return RANDOM_METADATA_KEY in (handle.metadata() or {})
    except Exception:
        return False


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def default_build_dir() -> Path:
    """Where benchmarks put built models: $SPURGE_REALSIZE_DIR or /tmp/spurge-realsize."""
    return Path(os.environ.get("SPURGE_REALSIZE_DIR", "/tmp/spurge-realsize"))
