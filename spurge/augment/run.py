"""``spurge augment``: tokens, plan, batched generation, filter and store in one resumable run.

:func:`augment` runs four named steps over one :class:`AugmentRun`: :func:`prepare_tokens`
(learn or take the class tokens), :func:`plan` (every image that should exist),
:func:`prune_stale` (delete images of an older plan) and :func:`generate_missing` (generate,
filter and store what is not on disk yet). What to make comes in settings objects
(:class:`GenerationSettings`, :class:`TokenSettings`, :class:`FilterSettings`), which the CLI
builds. Every file is written atomically; the images on disk are the truth on resume.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from spurge.augment.filters import ClipFilter, FilterSettings
from spurge.augment.generate import (
    BatchSampler,
    GenerationSettings,
    PlanItem,
    batches_by_strength,
    plan_images,
)
from spurge.augment.methods import class_phrase
from spurge.augment.models import DEFAULT_MODEL, LazyModel, LoadedModel, sampler_name
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
from spurge.errors import ModelError
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

    #: What the model loader said a user must know (random weights, fp16 upcast on CPU).
    model_notes: list[str] = field(default_factory=list)

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
        for note in self.model_notes:
            text += f" NOTE: {note}"
        if self.is_tiny_random:
            text += (
                " NOTE: --model tiny-random is a miniature random-weight Stable Diffusion "
                "for tests and the offline demo; its images are noise-like, not real "
                "augmentations."
            )
        lines.append(text)
        return " ".join(lines)


@dataclass
class AugmentRun:
    """What the steps of one run share: inputs, settings, the (lazily loaded) model."""

    tiles_dir: Path
    config: SpeciesConfig
    out_dir: Path
    settings: GenerationSettings
    model: LazyModel
    sampler_tag: str  # the scheduler the plan records (a pre-loaded pipeline brings its own)
    train: pd.DataFrame
    started: float


@dataclass
class Tokens:
    """Class tokens for a run: where they are and their file hashes (None without tokens)."""

    result: TokenResult | None = None
    tokens_dir: Path | None = None
    hashes: dict[str, str] | None = None


@dataclass
class Generated:
    """Counts of :func:`generate_missing`."""

    generated: int = 0
    reused: int = 0
    rejected: int = 0  # by the current filter, all runs
    rejected_now: int = 0


def augment(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    generation: GenerationSettings | None = None,
    *,
    model: str | LoadedModel = DEFAULT_MODEL,
    device: str | None = "auto",
    token_settings: TokenSettings | None = None,
    tokens_dir: str | Path | None = None,
    train_tokens_only: bool = False,
    filter_settings: FilterSettings | None = None,
    progress: bool = True,
    attention_slicing: bool = False,
) -> AugmentResult:
    """Make synthetic training tiles (DA-Fusion and baselines) into the store ``out_dir``.

    Tokens are learned into ``out_dir/tokens`` (or taken from ``tokens_dir``, which must hold
    one file per class), then every planned image missing from the store is generated in
    batches. Re-running an identical plan generates nothing; a changed parameter regenerates
    only the images it affects and removes those no longer planned. ``model`` is a name
    (loaded only if something is to be generated) or a :class:`LoadedModel`, used as is.
    Progress bars show only when ``progress`` and stderr is a terminal. ``attention_slicing``
    computes attention in slices when a model is loaded here: less GPU memory, slower, the
    same images up to float rounding.
    """
    settings = generation or GenerationSettings()
    run = open_run(tiles_dir, config, out_dir, settings, model, device, attention_slicing)
    tokens = Tokens()
    if run.settings.uses_tokens or train_tokens_only:
        tokens = prepare_tokens(run, token_settings, tokens_dir, _bars(progress))
    if train_tokens_only:
        return _result(run, tokens, [], 0, Generated(), None, manifest=False)
    items = plan(run, tokens)
    # Loaded before anything is deleted or generated, so a missing CLIP model fails first.
    clip = load_filter(filter_settings, run.model)
    pruned = prune_stale(run.out_dir, items)
    counts = generate_missing(run, items, tokens, clip, progress)
    return _result(run, tokens, items, pruned, counts, clip, manifest=True)


def _bars(progress: bool) -> bool:
    """Progress bars only on a terminal, as tqdm's ``disable=None`` does for the other stages."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(progress and isatty is not None and isatty())


def open_run(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    settings: GenerationSettings,
    model: str | LoadedModel,
    device: str | None,
    attention_slicing: bool = False,
) -> AugmentRun:
    """Check the inputs, make the store folder and clear a killed run's temporaries."""
    started = time.perf_counter()
    train = labelled_train_tiles(tiles_dir, config)
    out = ensure_writable_dir(out_dir)
    for folder in [out, out / TOKENS_DIR, *(out / IMAGES_DIR).glob("*")]:
        if folder.is_dir():
            remove_stale_temporaries(folder)
    if isinstance(model, LoadedModel):
        lazy, tag = LazyModel.from_loaded(model), sampler_name(model.pipe.scheduler)
    else:
        lazy = LazyModel(model, device, settings.sampler, attention_slicing)
        tag = settings.sampler
    return AugmentRun(Path(tiles_dir), config, out, settings, lazy, tag, train, started)


def prepare_tokens(
    run: AugmentRun,
    token_settings: TokenSettings | None,
    tokens_dir: str | Path | None,
    progress: bool,
) -> Tokens:
    """Learn the class tokens into the store (up-to-date files are re-used), or check the
    given folder holds one per class; hash each file (the hashes go into image ids).
    """
    result = None
    if tokens_dir is None:
        result = train_tokens(
            run.tiles_dir,
            run.config,
            run.out_dir,
            run.model,
            settings=token_settings,
            device=run.model.device,
            progress=progress,
            gradient_checkpointing=token_settings is not None
            and token_settings.gradient_checkpointing,
        )
        folder = Path(result.tokens_dir or run.out_dir / TOKENS_DIR)
    else:
        folder = Path(tokens_dir)
    hashes = {}
    for name in run.config.class_names:
        path = token_path(folder, name)
        if not path.is_file():
            raise ModelError(f"token file for class {name!r} is missing", path)
        hashes[name] = sha256_file(path)
    return Tokens(result, folder, hashes)


def plan(run: AugmentRun, tokens: Tokens) -> list[PlanItem]:
    """Every image the store should hold for these settings, tokens and model."""
    return plan_images(
        run.tiles_dir,
        run.train,
        run.config,
        run.settings,
        run.model.model_hash,
        tokens.hashes if run.settings.uses_tokens else None,
        sampler_tag=run.sampler_tag,
    )


def load_filter(settings: FilterSettings | None, model: LazyModel) -> ClipFilter | None:
    """The quality filter (CLIP, on the generation device), or None."""
    if settings is None:
        return None
    return ClipFilter(settings.model, settings.threshold, device=resolve_device(model.device))


def prune_stale(out_dir: Path, items: list[PlanItem]) -> int:
    """Delete images of an older plan so the store is exactly the current plan."""
    planned = {i.image_id for i in items}
    pruned = 0
    for png in (out_dir / IMAGES_DIR).glob("*/*.png"):
        if png.stem not in planned:
            png.unlink()
            pruned += 1
    return pruned


def generate_missing(
    run: AugmentRun,
    items: list[PlanItem],
    tokens: Tokens,
    clip: ClipFilter | None,
    progress: bool,
) -> Generated:
    """Generate, filter and store every planned image neither on disk nor rejected before.

    The manifest is rewritten every :data:`FLUSH_SECONDS` and at the end, also on an
    interruption, so it always lists what is on disk.
    """
    store = StoreWriter(run, items, clip.identity if clip else None)
    todo = [i for i in items if i.image_id not in store.done_ids | store.rejected_ids]
    reused = len(store.done_ids)
    if todo:
        loaded = run.model.get()
        if run.settings.uses_tokens and tokens.tokens_dir is not None:
            load_tokens(loaded, tokens.tokens_dir, run.config)
        sampler = BatchSampler(
            loaded, negative_prompt=run.settings.negative_prompt, batch_size=run.settings.batch_size
        )
        bar = tqdm(
            total=len(todo),
            desc="augment",
            unit="img",
            leave=False,
            disable=None if progress else True,
        )
        try:
            for batch in batches_by_strength(todo, sampler.batch_size):
                images = sampler.generate(batch)
                scores = _filter_scores(clip, run.config, batch, images)
                for item, image, score in zip(batch, images, scores, strict=True):
                    if clip is None or clip.keep(np.asarray([score]))[0]:
                        store.add(item, image)
                    else:
                        store.reject(item, score)
                bar.update(len(batch))
                store.flush(every=FLUSH_SECONDS)
        finally:
            bar.close()
            store.flush()  # also on interruption: the manifest lists what is on disk
    store.finish()
    return Generated(store.generated, reused, store.rejected_total, len(store.new_rejections))


def _filter_scores(
    clip: ClipFilter | None, config: SpeciesConfig, batch: list[PlanItem], images: list
) -> list[float | None]:
    """CLIP similarity of each image with its class's words in the plain prompt."""
    if clip is None:
        return [None] * len(batch)
    texts = [config.prompt_template.format(token=class_phrase(config, i.label)) for i in batch]
    return [float(s) for s in clip.scores(images, texts)]


class StoreWriter:
    """Writes kept images and keeps ``synthetic.parquet`` and ``rejected.parquet`` in step."""

    def __init__(self, run: AugmentRun, items: list[PlanItem], filter_id: str | None) -> None:
        self.run, self.items, self.filter_id = run, items, filter_id
        out = run.out_dir
        self.done_ids = {i.image_id for i in items if synthetic_image_path(out, i.path).is_file()}
        self.rejected = read_rejected(out)
        self.rejected_ids: set[str] = (
            set(self.rejected.loc[self.rejected["filter"] == filter_id, "image_id"])
            if filter_id
            else set()
        )
        self.new_rejections: list[dict] = []
        self.generated = 0
        self._last_flush = time.monotonic()

    @property
    def rejected_total(self) -> int:
        return len(self.rejected_ids) + len(self.new_rejections)

    def add(self, item: PlanItem, image: np.ndarray) -> None:
        with atomic_path(synthetic_image_path(self.run.out_dir, item.path)) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        self.done_ids.add(item.image_id)
        self.generated += 1

    def reject(self, item: PlanItem, score: float | None) -> None:
        self.new_rejections.append(
            {"image_id": item.image_id, "filter": self.filter_id, "score": score}
        )

    def rows(self) -> pd.DataFrame:
        kept = [i for i in self.items if i.image_id in self.done_ids]
        if not kept:
            return empty_synthetic_frame()
        model = self.run.model
        return pd.DataFrame([i.row(model.model_id, model.model_hash) for i in kept])

    def flush(self, every: float | None = None) -> None:
        """Write both manifests (with ``every``: only if that many seconds have passed)."""
        if every is not None and time.monotonic() - self._last_flush <= every:
            return
        self._write(self.rows())
        if self.new_rejections:
            write_rejected(
                pd.concat([self.rejected, pd.DataFrame(self.new_rejections)]), self.run.out_dir
            )
        self._last_flush = time.monotonic()

    def finish(self) -> None:
        """Write the manifest unless it already lists exactly the kept images (a no-op re-run
        leaves the file untouched).
        """
        rows = self.rows()
        if _manifest_changed(rows, self.run.out_dir):
            self._write(rows)

    def _write(self, rows: pd.DataFrame) -> None:
        write_synthetic_manifest(rows, self.run.out_dir, self.run.config.fingerprint())


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


def _result(
    run: AugmentRun,
    tokens: Tokens,
    items: list[PlanItem],
    pruned: int,
    counts: Generated,
    clip: ClipFilter | None,
    *,
    manifest: bool,
) -> AugmentResult:
    return AugmentResult(
        out_dir=run.out_dir,
        method=run.settings.method,
        model_id=run.model.model_id,
        is_tiny_random=run.model.is_tiny_random,
        model_notes=run.model.notes,
        planned=len(items),
        generated=counts.generated,
        reused=counts.reused,
        pruned=pruned,
        rejected=counts.rejected,
        rejected_now=counts.rejected_now,
        tiles=len(run.train),
        seconds=time.perf_counter() - run.started,
        tokens=tokens.result,
        filter_id=clip.identity if clip else None,
        model_loaded=run.model.loaded,
        manifest=run.out_dir / SYNTHETIC_MANIFEST if manifest else None,
    )
