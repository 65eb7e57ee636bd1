"""Generation plan and batched img2img sampling (DA-Fusion's multi-strength, multi-context).

The plan lists every synthetic image to exist: for each real training tile, ``per_tile``
variants cycling through the strengths and prompts (plain + each context), each with a seed
derived from (seed, tile_id, index). The sampler runs the plan in batches across tiles:
every distinct prompt goes through the text encoder once per run, every source tile through
the VAE once (its variants share the latents; strength 1.0 starts from pure noise and skips the
encode), and images with the same strength share one scheduler and one batched UNet call
per step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from spurge.augment.methods import check_templates, get_method
from spurge.augment.models import LoadedModel
from spurge.errors import ConfigError, ManifestError, ModelError

if TYPE_CHECKING:  # pydantic/geopandas stay out of a GPU check that only samples
    from spurge.config import SpeciesConfig

DEFAULT_STRENGTHS = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class GenerationSettings:
    """What to generate; defaults follow DA-Fusion with Diff-Mix's sampler choice.

    ``method`` names a registered method that makes a synthetic store
    (:mod:`spurge.augment.methods`). ``batch_size`` only groups the work (images are the same
    for any batch size); ``None`` fits it to the device (:func:`auto_batch_size`) and halves it
    after a GPU out-of-memory error. ``negative_prompt`` is the unconditional prompt of guidance.
    """

    method: str = "da-fusion"
    per_tile: int = 10
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    steps: int = 25
    guidance: float = 7.5
    sampler: str = "dpm"
    seed: int = 0
    batch_size: int | None = None
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not get_method(self.method).needs_store:
            raise ConfigError(
                f"method {self.method!r} makes no synthetic images (it is a training baseline)"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.per_tile < 1:
            raise ConfigError(f"per_tile must be >= 1, got {self.per_tile}")
        if not self.strengths:
            raise ConfigError("at least one strength is needed")
        bad = [s for s in self.strengths if not 0 < s <= 1]
        if bad:
            raise ConfigError(f"strength {bad[0]} is out of range; strengths must be in (0, 1]")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance}")
        low = [s for s in self.strengths if int(self.steps * s) < 1]
        if low:
            raise ConfigError(
                f"strength {low[0]} x {self.steps} steps runs no denoising step; raise --steps"
            )

    @property
    def uses_tokens(self) -> bool:
        return get_method(self.method).uses_tokens


@dataclass(frozen=True)
class PlanItem:
    """One synthetic image to exist in the store."""

    image_id: str
    path: str  # relative to the store
    label: str
    source_tile_id: str
    source_path: str  # absolute path of the real tile
    source_size: tuple[int, int]  # (width, height) of the real tile; outputs match it
    method: str
    prompt: str
    context: str | None
    strength: float
    seed: int
    steps: int
    guidance: float
    token_hash: str | None

    def row(self, model_id: str, model_hash: str) -> dict:
        return {
            "image_id": self.image_id,
            "path": self.path,
            "label": self.label,
            "source_tile_id": self.source_tile_id,
            "method": self.method,
            "prompt": self.prompt,
            "context": self.context,
            "strength": self.strength,
            "seed": self.seed,
            "model_id": model_id,
            "model_hash": model_hash,
            "token_hash": self.token_hash,
            "steps": self.steps,
            "guidance": self.guidance,
        }


def item_seed(seed: int, tile_id: str, index: int) -> int:
    """Per-image seed from (run seed, tile, index): stable across runs, batches and machines."""
    digest = hashlib.sha256(f"{seed}:{tile_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def prompt_variants(
    config: SpeciesConfig, class_name: str, method: str
) -> list[tuple[str, str | None]]:
    """``(prompt, context)`` pairs a class cycles through (the method's); plain prompt first."""
    check_templates(config)
    variants = get_method(method).prompts(config, class_name)  # type: ignore[misc]
    if not variants:
        raise ConfigError(f"method {method!r} gives no prompt for class {class_name!r}")
    return variants


def plan_images(
    tiles_dir: str | Path,
    train_rows,
    config: SpeciesConfig,
    settings: GenerationSettings,
    model_hash: str,
    token_hashes: dict[str, str] | None,
    sampler_tag: str | None = None,
) -> list[PlanItem]:
    """Every image of the plan, in tile order; ``image_id`` hashes all that determines it."""
    from spurge.io.synthetic import image_relpath
    from spurge.io.tiles import tile_image_path

    items: list[PlanItem] = []
    n_strengths = len(settings.strengths)
    for row in train_rows.itertuples(index=False):
        source = tile_image_path(tiles_dir, row.path)
        try:
            data = source.read_bytes()
            with Image.open(source) as img:
                size = img.size
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read tile image ({exc})", source) from exc
        source_hash = hashlib.sha256(data).hexdigest()
        variants = prompt_variants(config, row.label, settings.method)
        token_hash = token_hashes.get(row.label) if token_hashes else None
        for index in range(settings.per_tile):
            # Balanced design: strengths cycle fastest; prompts shift once per strength cycle
            # so every (strength, prompt) pair appears as per_tile grows.
            strength = float(settings.strengths[index % n_strengths])
            prompt, context = variants[(index + index // n_strengths) % len(variants)]
            seed = item_seed(settings.seed, row.tile_id, index)
            key = {
                "source": source_hash,
                "tile_id": row.tile_id,
                "label": row.label,
                "index": index,
                "method": settings.method,
                "prompt": prompt,
                "strength": strength,
                "seed": seed,
                "steps": settings.steps,
                "guidance": settings.guidance,
                "sampler": sampler_tag or settings.sampler,
                "model_hash": model_hash,
                "token_hash": token_hash,
                "size": list(size),
            }
            if settings.negative_prompt:  # only when set, so default ids stay as they were
                key["negative_prompt"] = settings.negative_prompt
            image_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
            items.append(
                PlanItem(
                    image_id=image_id,
                    path=image_relpath(row.label, image_id),
                    label=row.label,
                    source_tile_id=row.tile_id,
                    source_path=str(source),
                    source_size=size,
                    method=settings.method,
                    prompt=prompt,
                    context=context,
                    strength=strength,
                    seed=seed,
                    steps=settings.steps,
                    guidance=settings.guidance,
                    token_hash=token_hash,
                )
            )
    return items


def batches_by_strength(items: list[PlanItem], batch_size: int) -> list[list[PlanItem]]:
    """Chunks of at most ``batch_size`` items sharing a strength (so they share timesteps)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    groups: dict[float, list[PlanItem]] = {}
    for item in items:
        groups.setdefault(item.strength, []).append(item)
    batches = []
    for strength in sorted(groups, reverse=True):
        group = groups[strength]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


@dataclass
class SamplerStats:
    text_encodes: int = 0
    vae_encodes: int = 0
    images: int = 0
    unet_calls: int = 0
    oom_retries: int = 0  # times an automatic batch size was halved after GPU out-of-memory
    cache: dict = field(default_factory=dict, repr=False)


#: Batch size on CPU: memory is rarely the limit there, and larger batches gain little.
CPU_BATCH_SIZE = 4
#: Largest automatic batch (larger ones gain nothing measurable on one GPU).
MAX_AUTO_BATCH = 32
#: Estimated CUDA peak per image of a batch (UNet with guidance, i.e. 2 samples) at 512 px in
#: fp16 with SDPA, and the fixed part (one-image VAE decode, workspace). Conservative; scaled
#: by pixels and by bytes per value. GPU figures: see docs/augment.md.
CUDA_BYTES_PER_IMAGE = 0.75 * 2**30
CUDA_FIXED_BYTES = 2.5 * 2**30
#: Fraction of free memory the automatic batch may plan to use (allocator fragmentation).
CUDA_HEADROOM = 0.85


def auto_batch_size(loaded: LoadedModel, free_bytes: int | None = None) -> int:
    """Images per batch that fit: on CUDA from free memory and a per-image estimate, else a
    fixed small number. ``free_bytes`` overrides the measured free memory (what a smaller
    card would have).
    """
    if loaded.device.type != "cuda":
        return CPU_BATCH_SIZE
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(loaded.device)[0]
    scale = (loaded.resolution / 512) ** 2 * (torch.finfo(loaded.dtype).bits / 16)
    usable = free_bytes * CUDA_HEADROOM - CUDA_FIXED_BYTES * scale
    return int(min(max(usable // (CUDA_BYTES_PER_IMAGE * scale), 1), MAX_AUTO_BATCH))


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or MPS) out-of-memory error, whatever type the backend raised it as."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class BatchSampler:
    """Batched img2img over a loaded pipeline with prompt and source-latent caches.

    ``batch_size=None`` fits the batch automatically (:func:`auto_batch_size`) and halves it
    after a GPU out-of-memory error; an explicit batch size that runs out of memory is a
    one-line :class:`ModelError` suggesting a smaller one.
    """

    def __init__(
        self, loaded: LoadedModel, negative_prompt: str = "", batch_size: int | None = None
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.negative_prompt = negative_prompt
        self.auto_batch = batch_size is None
        self.batch_size = batch_size if batch_size is not None else auto_batch_size(loaded)
        self.stats = SamplerStats()
        self._prompts: dict[str, torch.Tensor] = {}
        self._latents: dict[str, torch.Tensor] = {}

    def generate(self, items: list[PlanItem]) -> list[np.ndarray]:
        """Generate items sharing strength, steps and guidance in chunks of ``batch_size``."""
        out: list[np.ndarray] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.batch_size]
            try:
                out += self.generate_batch(chunk)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._shrink_after_oom(len(chunk), exc)
                continue
            start += len(chunk)
        return out

    def _shrink_after_oom(self, size: int, exc: BaseException) -> None:
        if self.loaded.device.type == "cuda":
            torch.cuda.empty_cache()
        if not self.auto_batch or size == 1:
            hint = (
                f"pass a smaller --batch-size (e.g. {size // 2})"
                if size > 1
                else "even batch size 1 does not fit: use --attention-slicing or a GPU with more "
                "free memory"
            )
            raise ModelError(
                f"GPU out of memory at batch size {size}; {hint}", self.loaded.model_id
            ) from exc
        self.batch_size = max(1, size // 2)
        self.stats.oom_retries += 1

    def _embed(self, prompt: str) -> torch.Tensor:
        if prompt not in self._prompts:
            # encode_prompt expands multi-vector textual-inversion tokens (<c> -> <c> <c>_1 ...).
            embeds, _ = self.pipe.encode_prompt(prompt, self.loaded.device, 1, False)
            self._prompts[prompt] = embeds[0]
            self.stats.text_encodes += 1
        return self._prompts[prompt]

    def _source_latents(self, path: str) -> torch.Tensor:
        if path not in self._latents:
            res = self.loaded.resolution
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((res, res), Image.Resampling.BICUBIC)
            pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
            pixels = pixels.permute(2, 0, 1)[None].to(self.loaded.device, self.loaded.dtype)
            vae = self.pipe.vae
            # The posterior mean: deterministic, and shared by all variants of the tile.
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            self._latents[path] = latents[0]
            self.stats.vae_encodes += 1
        return self._latents[path]

    def _scheduler(self):
        return type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)

    @torch.no_grad()
    def generate_batch(self, items: list[PlanItem]) -> list[np.ndarray]:
        """Generate one batch sharing strength, steps and guidance; uint8 HxWx3 each."""
        if len({(i.strength, i.steps, i.guidance) for i in items}) != 1:
            raise ModelError("a batch must share strength, steps and guidance")
        first = items[0]
        device, dtype = self.loaded.device, self.loaded.dtype
        pipe = self.pipe
        scheduler = self._scheduler()
        scheduler.set_timesteps(first.steps, device=device)
        init_steps = min(int(first.steps * first.strength), first.steps)
        t_start = max(first.steps - init_steps, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)

        latent_side = self.loaded.resolution // pipe.vae_scale_factor
        shape = (pipe.unet.config.in_channels, latent_side, latent_side)
        noise = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(i.seed)) for i in items]
        ).to(device, dtype)
        if init_steps == first.steps and first.strength >= 1.0:
            latents = noise * scheduler.init_noise_sigma  # pure noise: no VAE encode needed
        else:
            source = torch.stack([self._source_latents(i.source_path) for i in items])
            latents = scheduler.add_noise(source, noise, timesteps[:1].repeat(len(items)))

        cond = torch.stack([self._embed(i.prompt) for i in items])
        guided = first.guidance > 1.0
        if guided:
            uncond = self._embed(self.negative_prompt).expand_as(cond)
            context = torch.cat([uncond, cond])
        else:
            context = cond
        for t in timesteps:
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            pred = pipe.unet(model_in, t, encoder_hidden_states=context).sample
            self.stats.unet_calls += 1
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + first.guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample

        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        images = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        images = images.permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for item, image in zip(items, images, strict=True):
            if image.shape[1::-1] != item.source_size:
                image = np.asarray(
                    Image.fromarray(image).resize(item.source_size, Image.Resampling.BICUBIC)
                )
            out.append(image)
        self.stats.images += len(items)
        return out


def reference_generate(loaded: LoadedModel, item: PlanItem) -> np.ndarray:
    """One image the way the DA-Fusion reference code makes it: one full pipeline call.

    The prompt and the source tile are re-encoded on every call. Used by the benchmark.
    """
    res = loaded.resolution
    with Image.open(item.source_path) as img:
        source = img.convert("RGB").resize((res, res), Image.Resampling.BICUBIC)
    result = loaded.pipe(
        prompt=item.prompt,
        image=source,
        strength=item.strength,
        num_inference_steps=item.steps,
        guidance_scale=item.guidance,
        generator=torch.Generator().manual_seed(item.seed),
        output_type="np",
    )
    image = (np.clip(result.images[0], 0, 1) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize(item.source_size, Image.Resampling.BICUBIC))
