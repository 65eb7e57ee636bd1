"""``spurge augment``: tokens, plan, batched generation, filter and store in one resumable run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from spurge.augment.filters import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_THRESHOLD,
    FILTERS,
    ClipFilter,
)
from spurge.augment.generate import (
    BatchSampler,
    GenerationSettings,
    PlanItem,
    batches_by_strength,
    class_phrase,
    plan_images,
)
from spurge.augment.models import (
    DEFAULT_MODEL,
    LazyModel,
    LoadedModel,
    sampler_name,
)
from spurge.augment.textual_inversion import (
    TOKENS_DIR,
    TokenResult,
    TokenSettings,
    labelled_train_tiles,
    load_tokens,
    token_path,
    train_tokens,
)
from spurge.config import SpeciesConfig
from spurge.device import resolve_device
from spurge.errors import ConfigError, ModelError
from spurge.io.atomic import atomic_path, ensure_writable_dir, remove_stale_temporaries, sha256_file
from spurge.io.synthetic import (
    IMAGES_DIR,
    SYNTHETIC_MANIFEST,
    empty_synthetic_frame,
    read_rejected,
    read_synthetic_manifest,
    synthetic_image_path,
    write_rejected,
    write_synthetic_manifest,
)

#: Seconds between manifest flushes during generation (the images are the truth on resume).
FLUSH_SECONDS = 10.0


@dataclass
class AugmentResult:
    """What one ``augment`` run did."""

    out_dir: Path
    method: str
    model_id: str
    is_tiny_random: bool
    planned: int
    generated: int
    reused: int
    pruned: int
    rejected: int
    rejected_now: int
    tiles: int
    seconds: float
    tokens: TokenResult | None = None
    filter_id: str | None = None
    model_loaded: bool = False
    manifest: Path | None = None

    def summary(self) -> str:
        lines = []
        if self.tokens is not None:
            lines.append(self.tokens.summary())
        if self.manifest is None:
            lines.append("Stopped after textual inversion (--train-tokens-only).")
            return " ".join(lines)
        text = (
            f"Augment ({self.method}, model {self.model_id}): {self.planned} synthetic images "
            f"planned from {self.tiles} training tiles; {self.generated} generated, "
            f"{self.reused} already in the store"
        )
        if self.pruned:
            text += f", {self.pruned} stale images from an older plan removed"
        if self.filter_id:
            text += (
                f"; filter {self.filter_id} dropped {self.rejected_now} new images "
                f"({self.rejected} dropped in total)"
            )
        text += f"; {self.seconds:.1f} s. Manifest: {self.manifest}."
        if self.is_tiny_random:
            text += (
                " NOTE: --model tiny-random is a miniature random-weight Stable Diffusion "
                "for tests and the offline demo; its images are noise-like, not real "
                "augmentations."
            )
        lines.append(text)
        return " ".join(lines)


def _write_png(path: Path, image) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _rows(items: list[PlanItem], model: LazyModel) -> pd.DataFrame:
    if not items:
        return empty_synthetic_frame()
    return pd.DataFrame([i.row(model.model_id, model.model_hash) for i in items])


def _manifest_changed(rows: pd.DataFrame, out_dir: Path) -> bool:
    path = out_dir / SYNTHETIC_MANIFEST
    if not path.is_file():
        return True
    try:
        old = read_synthetic_manifest(out_dir)
    except Exception:
        return True
    new = rows.astype(old.dtypes.to_dict()).sort_values("image_id").reset_index(drop=True)
    return not new.equals(old.sort_values("image_id").reset_index(drop=True))


def augment(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    method: str = "da-fusion",
    model: str | LoadedModel = DEFAULT_MODEL,
    per_tile: int = 10,
    *,
    strengths: tuple[float, ...] | None = None,
    steps: int = 25,
    guidance: float = 7.5,
    sampler: str = "dpm",
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = "auto",
    tokens_dir: str | Path | None = None,
    token_settings: TokenSettings | None = None,
    train_tokens_only: bool = False,
    filter: str | None = None,
    clip_model: str | None = None,
    clip_threshold: float | None = None,
    negative_prompt: str = "",
    progress: bool = True,
) -> AugmentResult:
    """Make synthetic training tiles (DA-Fusion and baselines) into the store ``out_dir``.

    Tokens are learned into ``out_dir/tokens`` (or taken from ``tokens_dir``, which must hold
    one file per class), then every planned image missing from the store is generated in
    batches. Re-running an identical plan generates nothing; a changed parameter regenerates
    only the images it affects and removes those no longer planned.
    """
    started = time.perf_counter()
    settings = GenerationSettings(
        method=method,
        per_tile=per_tile,
        strengths=tuple(strengths) if strengths is not None else GenerationSettings.strengths,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
    )
    if filter is not None and filter not in FILTERS:
        raise ConfigError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    train = labelled_train_tiles(tiles_dir, config)
    out_dir = ensure_writable_dir(out_dir)
    for folder in [out_dir, out_dir / TOKENS_DIR, *(out_dir / IMAGES_DIR).glob("*")]:
        if folder.is_dir():
            remove_stale_temporaries(folder)
    # A LoadedModel is used as is (its sampler wins); a name is loaded only if needed.
    if isinstance(model, LoadedModel):
        lazy = LazyModel.from_loaded(model)
    else:
        lazy = LazyModel(model, device=device, sampler=sampler)

    token_result: TokenResult | None = None
    token_hashes: dict[str, str] | None = None
    if settings.uses_tokens or train_tokens_only:
        if tokens_dir is None:
            token_result = train_tokens(
                tiles_dir,
                config,
                out_dir,
                lazy,
                settings=token_settings,
                device=device,
                progress=progress,
            )
            tokens_dir = token_result.tokens_dir
        token_hashes = {}
        for name in config.class_names:
            path = token_path(tokens_dir, name)
            if not path.is_file():
                raise ModelError(f"token file for class {name!r} is missing", path)
            token_hashes[name] = sha256_file(path)
    if train_tokens_only:
        return AugmentResult(
            out_dir=out_dir,
            method=method,
            model_id=lazy.model_id,
            is_tiny_random=lazy.is_tiny_random,
            planned=0,
            generated=0,
            reused=0,
            pruned=0,
            rejected=0,
            rejected_now=0,
            tiles=len(train),
            seconds=time.perf_counter() - started,
            tokens=token_result,
            model_loaded=lazy.loaded,
        )

    # A pre-loaded pipeline brings its own scheduler: the plan records that one.
    sampler_tag = sampler_name(model.pipe.scheduler) if isinstance(model, LoadedModel) else sampler
    items = plan_images(
        tiles_dir,
        train,
        config,
        settings,
        lazy.model_hash,
        token_hashes if settings.uses_tokens else None,
        sampler_tag=sampler_tag,
    )
    clip: ClipFilter | None = None
    filter_id = None
    rejected = read_rejected(out_dir)
    if filter == "clip":
        # Loaded up front so a missing CLIP model fails before any generation.
        clip = ClipFilter(
            clip_model or DEFAULT_CLIP_MODEL,
            DEFAULT_CLIP_THRESHOLD if clip_threshold is None else clip_threshold,
            device=resolve_device(lazy.device),
        )
        filter_id = clip.identity
    rejected_ids = (
        set(rejected.loc[rejected["filter"] == filter_id, "image_id"]) if filter_id else set()
    )
    planned_ids = {i.image_id for i in items}

    # Images of an older plan: drop them so the store is exactly the current plan.
    pruned = 0
    for png in (out_dir / IMAGES_DIR).glob("*/*.png"):
        if png.stem not in planned_ids:
            png.unlink()
            pruned += 1

    done = [i for i in items if synthetic_image_path(out_dir, i.path).is_file()]
    done_ids = {i.image_id for i in done}
    todo = [i for i in items if i.image_id not in done_ids and i.image_id not in rejected_ids]
    reused = len(done)
    new_rejections: list[dict] = []

    def flush() -> None:
        kept = [i for i in items if i.image_id in done_ids]
        write_synthetic_manifest(_rows(kept, lazy), out_dir, config.fingerprint())
        if new_rejections:
            write_rejected(pd.concat([rejected, pd.DataFrame(new_rejections)]), out_dir)

    generated = 0
    if todo:
        loaded = lazy.get()
        if settings.uses_tokens:
            load_tokens(loaded, tokens_dir, config)
        sampler_ = BatchSampler(loaded, negative_prompt=negative_prompt, batch_size=batch_size)
        last_flush = time.monotonic()
        bar = tqdm(total=len(todo), desc="augment", unit="img", leave=False, disable=not progress)
        try:
            for batch in batches_by_strength(todo, batch_size):
                images = sampler_.generate(batch)
                keep = [True] * len(batch)
                if clip is not None:
                    texts = [
                        config.prompt_template.format(token=class_phrase(config, i.label))
                        for i in batch
                    ]
                    scores = clip.scores(images, texts)
                    keep = list(clip.keep(scores))
                    for item, score, ok in zip(batch, scores, keep, strict=True):
                        if not ok:
                            new_rejections.append(
                                {
                                    "image_id": item.image_id,
                                    "filter": filter_id,
                                    "score": float(score),
                                }
                            )
                for item, image, ok in zip(batch, images, keep, strict=True):
                    if ok:
                        _write_png(synthetic_image_path(out_dir, item.path), image)
                        done_ids.add(item.image_id)
                        generated += 1
                bar.update(len(batch))
                if time.monotonic() - last_flush > FLUSH_SECONDS:
                    flush()
                    last_flush = time.monotonic()
        finally:
            bar.close()
            flush()  # also on interruption: the manifest lists what is on disk
    kept_rows = _rows([i for i in items if i.image_id in done_ids], lazy)
    if _manifest_changed(kept_rows, out_dir):
        write_synthetic_manifest(kept_rows, out_dir, config.fingerprint())
    all_rejected = len(rejected_ids) + len(new_rejections)
    return AugmentResult(
        out_dir=out_dir,
        method=method,
        model_id=lazy.model_id,
        is_tiny_random=lazy.is_tiny_random,
        planned=len(items),
        generated=generated,
        reused=reused,
        pruned=pruned,
        rejected=all_rejected,
        rejected_now=len(new_rejections),
        tiles=len(train),
        seconds=time.perf_counter() - started,
        tokens=token_result,
        filter_id=filter_id,
        model_loaded=lazy.loaded,
        manifest=out_dir / SYNTHETIC_MANIFEST,
    )
