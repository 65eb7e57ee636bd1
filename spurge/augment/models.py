"""Stable Diffusion pipelines for augmentation: hub id, local folder, single file or tiny-random.

``tiny-random`` builds a miniature random-weight pipeline in-process (tests, offline demo,
benchmarks). Its UNet, VAE and text encoder are random, but its tokenizer is the real CLIP BPE
tokenizer (built offline from the vocabulary open_clip ships), so prompts, textual-inversion
tokens and token ids behave exactly as with Stable Diffusion. Its images are noise-like.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spurge.device import resolve_device
from spurge.errors import ModelError, one_line
from spurge.io.atomic import atomic_path, sha256_file, write_text_atomic

TINY_RANDOM = "tiny-random"
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
#: Version of the tiny-random recipe: part of its model hash, bump when the recipe changes.
TINY_RANDOM_VERSION = 1
_CLIP_MERGES = 49152 - 256 - 2  # merges CLIP keeps from the BPE file (SD's tokenizer too)


@dataclass
class LoadedModel:
    """A ready img2img pipeline and what the synthetic manifest records about it."""

    pipe: Any  # diffusers StableDiffusionImg2ImgPipeline (its attributes are untyped)
    model_id: str
    model_hash: str
    is_tiny_random: bool
    device: torch.device
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)  # what a user must be told (printed)
    #: Sampling resolution override (tests and CPU benchmarks run real-size SD below 512 px).
    sample_size: int | None = None

    @property
    def random_weights(self) -> bool:
        """True for tiny-random and for real-size models spurge built with random weights."""
        return self.is_tiny_random or RANDOM_WEIGHTS_NOTE in self.notes

    @property
    def resolution(self) -> int:
        """Side in pixels of the images the UNet was trained for (512 for SD 1.x)."""
        if self.sample_size:
            return self.sample_size
        pipe = self.pipe
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (SD is trained for it), float32 on CPU (fp16 is slow or unsupported)."""
    return torch.float16 if device.type == "cuda" else torch.float32


# ------------------------------------------------------------------------------------------
# The real CLIP tokenizer, built offline
# ------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("SPURGE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "spurge" if base else Path.home() / ".cache" / "spurge"


def clip_tokenizer_files(cache_dir: str | Path | None = None) -> Path:
    """Folder with ``vocab.json`` and ``merges.txt`` of the CLIP BPE tokenizer (49408 tokens).

    Built once from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` exactly as OpenAI's CLIP
    builds its vocabulary, so ids match SD's tokenizer ("a drone photo of" -> 49406 320 9397
    1125 539 49407).
    """
    folder = Path(cache_dir) if cache_dir is not None else _cache_root() / "clip-tokenizer"
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return folder
    bpe = _bpe_file()
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")[1 : _CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(vocab_path, json.dumps({tok: i for i, tok in enumerate(vocab)}))
    merge_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    write_text_atomic(merges_path, merge_text)
    return folder


def _bpe_file() -> Path:
    """open_clip's BPE file: ``$SPURGE_CLIP_BPE`` if set (machines without open_clip), else
    the one open_clip installs.
    """
    override = os.environ.get("SPURGE_CLIP_BPE")
    if override:
        bpe = Path(override)
    else:
        try:
            import open_clip
        except ImportError as exc:
            raise ModelError(
                "the CLIP BPE vocabulary needs open_clip_torch, or SPURGE_CLIP_BPE set to "
                "bpe_simple_vocab_16e6.txt.gz",
                "open_clip",
            ) from exc
        bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe.is_file():
        raise ModelError("CLIP BPE vocabulary is missing; reinstall open_clip_torch", bpe)
    return bpe


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (as in OpenAI's CLIP tokenizer)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_clip_tokenizer(cache_dir: str | Path | None = None):
    """transformers ``CLIPTokenizer`` with SD 1.x's vocabulary and 77-token context."""
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_files(cache_dir)
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
    )


# ------------------------------------------------------------------------------------------
# Miniature random pipeline
# ------------------------------------------------------------------------------------------


def build_tiny_random_pipeline(seed: int = 0, scheduler: str = "dpm"):
    """A miniature SD 1.x-shaped img2img pipeline with random weights (64-px images).

    UNet (32, 64) channels with one cross-attention block and 8x8 latents, a 4-level VAE
    (factor 8, like SD's) and a 2-layer CLIP text encoder of width 32 over the real vocabulary.
    Deterministic for a seed.
    """
    from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        text_config = CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=32,
        )
        text_encoder = CLIPTextModel(text_config)
    finally:
        torch.random.set_rng_state(generator_state)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        unet=unet,
        scheduler=make_scheduler(scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]  # untyped mixin
    return pipe


#: SD 1.x's noise schedule (the hub checkpoints' scheduler_config.json).
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}

SAMPLERS = ("dpm", "pndm", "ddim")


def make_scheduler(name: str, base_config: dict | None = None):
    """Sampler by name over SD's noise schedule: ``dpm`` (DPM-Solver++ 2M), ``pndm``, ``ddim``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    schedule = dict(SD_SCHEDULE)
    if base_config:
        schedule.update({k: base_config[k] for k in SD_SCHEDULE if k in base_config})
    if name == "dpm":
        return DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", solver_order=2)
    if name == "pndm":
        return PNDMScheduler(**schedule, skip_prk_steps=True, set_alpha_to_one=False)
    if name == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False)
    raise ModelError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def sampler_name(scheduler) -> str:
    """Short name of a scheduler instance (``dpm``, ``pndm``, ``ddim`` or its class name)."""
    names = {
        "DPMSolverMultistepScheduler": "dpm",
        "PNDMScheduler": "pndm",
        "DDIMScheduler": "ddim",
    }
    return names.get(type(scheduler).__name__, type(scheduler).__name__)


# ------------------------------------------------------------------------------------------
# Loading and hashing
# ------------------------------------------------------------------------------------------


def _cached_file_hash(path: Path) -> str:
    """sha256 of a (multi-GB) weight file, cached by path, size and mtime."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _cache_root() / "hashes.json"
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = sha256_file(path)
    known[key] = digest
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps(known))
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return digest


def _folder_hash(folder: Path) -> str:
    """Hash of a diffusers folder: every config's content and every weight file's sha256."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix in {".json", ".txt"}:
            digest.update(f"{rel}:{hashlib.sha256(path.read_bytes()).hexdigest()}".encode())
        elif path.suffix in {".safetensors", ".bin", ".ckpt", ".pt", ".pth"}:
            digest.update(f"{rel}:{_cached_file_hash(path)}".encode())
    return digest.hexdigest()


def tiny_random_hash(seed: int) -> str:
    return hashlib.sha256(f"{TINY_RANDOM}:v{TINY_RANDOM_VERSION}:seed{seed}".encode()).hexdigest()


def describe_model(model: str) -> tuple[str, str]:
    """``(model_id, model_hash)`` without loading the weights (cheap for re-run checks).

    The hash covers a folder's configs and weights, a single file's bytes, or the
    tiny-random recipe; weight hashes are cached by path, size and mtime.
    """
    if model == TINY_RANDOM:
        return model, tiny_random_hash(0)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix not in {".safetensors", ".ckpt"}:
            raise ModelError("a single-file model must be .safetensors or .ckpt", path)
        return model, _cached_file_hash(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError("not a diffusers model folder (no model_index.json)", path)
        return model, _folder_hash(path)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return model, _folder_hash(_hub_snapshot(model))
    raise ModelError("model path does not exist", model)


def _hub_snapshot(model: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))  # downloads once, then the local cache
    except Exception as exc:  # offline, unknown id, auth...
        raise ModelError(
            f"cannot fetch hub model ({one_line(exc, 160)}); pass a local "
            "folder or a .safetensors/.ckpt file",
            model,
        ) from exc


def load_model(
    model: str = DEFAULT_MODEL,
    device: str | None = "auto",
    sampler: str = "dpm",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    attention_slicing: bool = False,
) -> LoadedModel:
    """Load an img2img pipeline from a hub id, local folder, single checkpoint or ``tiny-random``.

    The sampler replaces the checkpoint's scheduler (keeping its noise schedule). Any failure
    to load is a one-line :class:`ModelError` naming the model. ``notes`` says what a user
    must know: random weights, fp16 weights upcast on CPU.
    """
    if sampler not in SAMPLERS:
        raise ModelError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    torch_device = resolve_device(device)
    torch_dtype = dtype or default_dtype(torch_device)
    model_id, model_hash = describe_model(model)
    notes: list[str] = []
    if model == TINY_RANDOM:
        pipe = build_tiny_random_pipeline(seed=0, scheduler=sampler)
    else:
        try:
            pipe = _load_pipeline(model, torch_dtype, notes)
        except ModelError:
            raise
        except Exception as exc:  # diffusers/hub raise many unrelated types
            raise ModelError(f"cannot load diffusion model ({one_line(exc, 200)})", model) from exc
        pipe.scheduler = make_scheduler(sampler, dict(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(torch_device)
    if model == TINY_RANDOM and torch_dtype != torch.float32:
        # Checkpoints were already loaded in torch_dtype. Casting with to() makes diffusers
        # warn about modules "to keep in float32" even when it lists none (the tiny UNet and
        # VAE have none), twice per CUDA run; silence that false alarm only.
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            pipe = pipe.to(dtype=torch_dtype)
        finally:
            diffusers_logging.set_verbosity(verbosity)
    configure_memory(pipe, attention_slicing=attention_slicing)
    return LoadedModel(
        pipe=pipe,
        model_id=model_id,
        model_hash=model_hash,
        is_tiny_random=model == TINY_RANDOM,
        device=torch_device,
        dtype=torch_dtype,
        notes=notes,
    )


def configure_memory(pipe, attention_slicing: bool = False) -> None:
    """Memory savers that do not change results: SDPA attention (diffusers' default on torch
    2), the VAE decoding one image at a time; optionally attention slicing (slower, for
    cards where even batch 1 does not fit).
    """
    vae = pipe.vae
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    else:  # older diffusers
        vae.use_slicing = True
    if attention_slicing:
        pipe.enable_attention_slicing()


RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: this Stable Diffusion was built by spurge with random weights (for tests "
    "and benchmarks); its images are noise"
)


def _load_pipeline(model: str, torch_dtype: torch.dtype, notes: list[str]):
    """The pipeline of a single file, a diffusers folder or a hub id (local files only)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from spurge.augment import realsize
    from spurge.augment.single_file import check_single_file, sd15_config_dir

    path = Path(model).expanduser()
    if path.is_file():
        info = check_single_file(path)
        if info.half_only and torch_dtype == torch.float32:
            notes.append(f"{path.name} holds float16 weights only; upcast to float32 on CPU")
        if realsize.is_random_single_file(path):
            notes.append(RANDOM_WEIGHTS_NOTE)
        # config= the shipped SD 1.x configs and our own tokenizer: nothing is fetched.
        return StableDiffusionImg2ImgPipeline.from_single_file(
            str(path),
            config=str(sd15_config_dir()),
            tokenizer=build_clip_tokenizer(),
            dtype=torch_dtype,
            safety_checker=None,
            local_files_only=True,
        )
    folder = path if path.is_dir() else _hub_snapshot(model)
    if realsize.is_random_folder(folder):
        notes.append(RANDOM_WEIGHTS_NOTE)
    variant = _half_variant(folder)
    if variant and torch_dtype == torch.float32:
        notes.append(f"{folder.name} holds fp16 weights only; upcast to float32 on CPU")
    return StableDiffusionImg2ImgPipeline.from_pretrained(
        str(folder),
        dtype=torch_dtype,
        variant=variant,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )


def _half_variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder's UNet has only ``*.fp16.*`` weight files (fp16-only repos)."""
    unet = folder / "unet"
    weights = [p.name for p in unet.glob("diffusion_pytorch_model*")] if unet.is_dir() else []
    if weights and all(".fp16." in name for name in weights):
        return "fp16"
    return None


def save_pipeline(pipe, folder: str | Path) -> Path:
    """Save a pipeline as a diffusers folder atomically (used to test local-folder loading)."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        pipe.save_pretrained(tmp)
    return folder


class LazyModel:
    """Describes a model at once (id, hash) but loads the weights only when first needed.

    An up-to-date store or token file never pays for loading Stable Diffusion.
    """

    def __init__(
        self,
        model: str,
        device: str | None = "auto",
        sampler: str = "dpm",
        attention_slicing: bool = False,
    ) -> None:
        self.model_id, self.model_hash = describe_model(model)
        self.device = device
        self.sampler = sampler
        self.attention_slicing = attention_slicing
        self._loaded: LoadedModel | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> LazyModel:
        """Wrap an already loaded pipeline (re-use one model across several runs)."""
        lazy = cls.__new__(cls)
        lazy.model_id, lazy.model_hash = loaded.model_id, loaded.model_hash
        # Never loads again: the pipeline, its device and its sampler are used as they are.
        lazy.device, lazy.sampler = str(loaded.device), sampler_name(loaded.pipe.scheduler)
        lazy._loaded = loaded
        return lazy

    @property
    def is_tiny_random(self) -> bool:
        return self.model_id == TINY_RANDOM

    @property
    def notes(self) -> list[str]:
        """The loaded model's notes (random weights, fp16 upcast); none before loading."""
        return list(self._loaded.notes) if self._loaded is not None else []

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(
                self.model_id,
                device=self.device,
                sampler=self.sampler,
                attention_slicing=self.attention_slicing,
            )
        return self._loaded
