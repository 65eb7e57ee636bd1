"""``spurge train``: one few-shot run, from a tiles folder to a run folder.

``train`` reads a tiles folder (``tiles.parquet`` from ``spurge tile``), draws K labelled
tiles per class from the train split (whole plots at a time), optionally mixes in synthetic
images of exactly those tiles from ``spurge augment`` (DA-Fusion's recipe: each draw is
replaced by one of its synthetic variants with probability ``synthetic_prob``), picks the
best step on the val split and scores the test split once, last, with that step's weights.
It writes ``model.safetensors`` + ``model.json`` (see :mod:`spurge.classifier`),
``metrics.json`` and ``training_curve.png`` into the run folder; ``metrics.json`` is written
last and marks a finished run. Training is not resumable mid-run: an interrupted run starts
over from step 0.

The steps, each a function below: few-shot data -> build -> fit -> score -> write run.
How to train is one :class:`TrainSettings`; what to train on is the arguments of ``train``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from spurge.classifier import (
    BackboneSpec,
    ModelCard,
    TileClassifier,
    build_classifier,
    load_card,
    save_model,
)
from spurge.config import SpeciesConfig
from spurge.device import resolve_device
from spurge.errors import SpurgeError
from spurge.io.atomic import (
    atomic_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    sha256_file,
    write_text_atomic,
)
from spurge.io.tiles import manifest_path, tile_image_path
from spurge.train.data import (
    FeatureCache,
    FewShotDataset,
    load_labelled_tiles,
    read_synthetic_store,
    sample_few_shot,
)
from spurge.train.metrics import SplitEvaluator, jsonable
from spurge.transform import TileTransform

METRICS = "metrics.json"
CURVE = "training_curve.png"
Mode = Literal["linear", "finetune"]
#: Settings that change where and how fast a run goes, never its result.
RUNTIME_FIELDS = ("device", "num_workers", "progress")


class TrainingWarning(UserWarning):
    """Something about the data that does not stop training but weakens its result."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train one few-shot classifier (the data are ``train``'s arguments).

    ``mode="linear"`` freezes the backbone (its BatchNorm statistics too) and trains a linear
    head, DA-Fusion's setting; ``"finetune"`` trains everything. ``lr`` defaults to 1e-3 for
    a linear head and 1e-4 for fine-tuning (Adam).
    """

    shots: int = 16
    seed: int = 0
    backbone: str = "efficientnet-lite0"
    mode: Mode = "linear"
    synthetic_prob: float = 0.5
    randaugment: bool = False
    steps: int = 200
    batch_size: int = 32
    lr: float | None = None
    eval_every: int = 25
    pretrained: bool = True
    device: str | None = None
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "finetune"):
            raise SpurgeError(f"--mode must be 'linear' or 'finetune', not {self.mode!r}")
        if not 0.0 <= self.synthetic_prob <= 1.0:
            raise SpurgeError(f"--synthetic-prob must lie in [0, 1], got {self.synthetic_prob}")
        if min(self.shots, self.steps, self.batch_size, self.eval_every) < 1:
            raise SpurgeError("--shots, --steps, --batch-size and --eval-every must be positive")
        if self.lr is not None and not self.lr > 0:
            raise SpurgeError(f"--lr must be positive, got {self.lr}")
        if self.num_workers < 0:
            raise SpurgeError(f"--workers must be >= 0, got {self.num_workers}")

    @property
    def learning_rate(self) -> float:
        return self.lr or (1e-3 if self.mode == "linear" else 1e-4)

    def recorded(self) -> dict[str, Any]:
        """The settings that decide a run's result (runtime ones left out)."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if k not in RUNTIME_FIELDS}

    def fingerprint(self) -> str:
        """Hash of :meth:`recorded`: two runs with equal fingerprints trained alike."""
        text = json.dumps(self.recorded(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What ``train`` wrote and measured."""

    run_dir: Path
    card: ModelCard
    metrics: dict[str, Any]
    n_train: int
    n_synthetic: int
    warnings: list[str] = field(default_factory=list)

    @property
    def val(self) -> dict[str, Any] | None:
        return self.metrics.get("val")

    @property
    def test(self) -> dict[str, Any] | None:
        return self.metrics.get("test")

    def summary(self) -> str:
        t = self.card.training
        parts = [
            f"Trained {self.card.backbone} ({self.card.mode}) for {t['steps']} steps on "
            f"{self.n_train} real tiles ({t['shots']} per class, seed {t['seed']})"
        ]
        if self.n_synthetic:
            parts.append(
                f" mixed with {self.n_synthetic} synthetic images at p={t['synthetic_prob']}"
            )
        if t["randaugment"]:
            parts.append(" with RandAugment")
        parts.append(".")
        if self.val:
            parts.append(
                f" Validation ({self.val['n']} tiles) picked step {t['best_step']}: balanced "
                f"accuracy {self.val['balanced_accuracy']:.3f}."
            )
        if self.test:
            parts.append(
                f" Held-out test ({self.test['n']} tiles, touched once): accuracy "
                f"{self.test['accuracy']:.3f}, balanced accuracy "
                f"{self.test['balanced_accuracy']:.3f}."
            )
        parts.append(f" Model, metrics.json and training curve in {self.run_dir}.")
        for message in self.warnings:
            parts.append(f" Warning: {message}")
        return "".join(parts)


@dataclass
class TrainData:
    """Step 1's output: the few-shot set, the val and test splits, the synthetic variants."""

    few: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    synthetic: list[list[str]]
    synthetic_sha256: str = ""

    @property
    def n_synthetic(self) -> int:
        return sum(len(s) for s in self.synthetic)


@dataclass
class Built:
    """Step 2's output: the model, its backbone spec, optimiser and device."""

    model: TileClassifier
    spec: BackboneSpec
    optimiser: torch.optim.Optimizer
    device: torch.device
    frozen: bool

    @property
    def transform(self) -> TileTransform:
        return self.spec.transform


@dataclass
class Fitted:
    """Step 3's output: the curve and the step whose weights the model now holds."""

    curve: list[dict[str, float]]
    best_step: int


def train(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    settings: TrainSettings | None = None,
    synthetic_dir: str | Path | None = None,
) -> TrainResult:
    """Train a few-shot tile classifier and write a run folder; see the module docstring."""
    settings = settings or TrainSettings()
    tiles_dir = Path(tiles_dir)
    run_dir = ensure_writable_dir(out_dir)
    remove_stale_temporaries(run_dir)
    notes: list[str] = []
    data = few_shot_data(tiles_dir, config, settings, synthetic_dir, notes)
    built = build(config, settings)
    evaluators = {
        name: SplitEvaluator(
            name,
            frame,
            tiles_dir,
            built.model,
            built.transform,
            built.frozen,
            built.device,
            settings.batch_size,
        )
        for name, frame in (("val", data.val), ("test", data.test))
        if not frame.empty
    }
    fitted = fit(built, data, tiles_dir, settings, evaluators.get("val"), config.class_names)
    scores = score(evaluators, config.class_names)
    return write_run(
        run_dir, tiles_dir, config, settings, synthetic_dir, data, built, fitted, scores, notes
    )


def _warn(message: str, collected: list[str]) -> None:
    warnings.warn(message, TrainingWarning, stacklevel=3)
    collected.append(message)


def few_shot_data(
    tiles_dir: Path,
    config: SpeciesConfig,
    settings: TrainSettings,
    synthetic_dir: str | Path | None,
    notes: list[str],
) -> TrainData:
    """Step 1: the few-shot draw, the val/test splits and the draw's synthetic variants."""
    tiles = load_labelled_tiles(tiles_dir, config)
    few = sample_few_shot(tiles, config, settings.shots, settings.seed, manifest_path(tiles_dir))
    data = TrainData(
        few=few,
        val=tiles[tiles["split"] == "val"],
        test=tiles[tiles["split"] == "test"],
        synthetic=[[] for _ in range(len(few))],
    )
    if data.val.empty:
        _warn("no val tiles: the last step is kept instead of the best on validation", notes)
    if data.test.empty:
        _warn("no test tiles: no held-out accuracy can be reported", notes)
    if synthetic_dir is not None:
        store = read_synthetic_store(synthetic_dir, tiles, config)
        by_source = store.groupby("source_tile_id")["abs_path"].apply(sorted).to_dict()
        data.synthetic = [list(by_source.get(t, [])) for t in few["tile_id"]]
        data.synthetic_sha256 = sha256_file(store.attrs["manifest"])
        if data.n_synthetic == 0:
            _warn(
                "the synthetic store has no images of the sampled few-shot tiles; "
                "training on real tiles only",
                notes,
            )
    return data


def build(config: SpeciesConfig, settings: TrainSettings) -> Built:
    """Step 2: seed torch, build the classifier on its device and its optimiser."""
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    model, spec = build_classifier(
        settings.backbone, len(config.class_names), pretrained=settings.pretrained
    )
    model.to(device)
    frozen = settings.mode == "linear"
    if frozen:
        model.backbone.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=settings.learning_rate)
    return Built(model, spec, optimiser, device, frozen)


def _loader(
    data: TrainData, tiles_dir: Path, settings: TrainSettings, transform: TileTransform
) -> torch.utils.data.DataLoader:
    dataset = FewShotDataset(
        [str(tile_image_path(tiles_dir, p)) for p in data.few["path"]],
        data.few["target"].tolist(),
        data.synthetic,
        settings.synthetic_prob if data.n_synthetic else 0.0,
        transform,
        randaugment=settings.randaugment,
    )
    sampler = torch.utils.data.RandomSampler(
        dataset,
        replacement=True,
        num_samples=settings.steps * settings.batch_size,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(settings.seed + 1),
        persistent_workers=False,
    )


def fit(
    built: Built,
    data: TrainData,
    tiles_dir: Path,
    settings: TrainSettings,
    val: SplitEvaluator | None,
    class_names: Sequence[str],
) -> Fitted:
    """Step 3: the training loop; checks val every ``eval_every`` steps and ends holding the
    weights of the best val step (of the last step when there is no val split).
    """
    model, frozen = built.model, built.frozen
    loss_fn = nn.CrossEntropyLoss()
    loader = _loader(data, tiles_dir, settings, built.transform)
    features_of = FeatureCache(model.backbone) if frozen else None
    bar = tqdm(loader, total=settings.steps, desc="train", unit="step", leave=False,
               disable=None if settings.progress else True)  # fmt: skip
    curve: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    running: list[float] = []
    for step, (images, targets, keys) in enumerate(bar, start=1):
        model.train(not frozen)  # frozen: keep BatchNorm statistics as pretrained
        x = built.transform.normalise(images.to(built.device))
        logits = model(x) if features_of is None else model.head(features_of(x, keys.tolist()))
        loss = loss_fn(logits, targets.to(built.device))
        built.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        built.optimiser.step()
        running.append(float(loss.detach()))
        if step % settings.eval_every and step != settings.steps:
            continue
        point = {"step": step, "train_loss": float(np.mean(running))}
        running = []
        if val is not None:
            point["val_balanced_accuracy"] = val.score(class_names)["balanced_accuracy"]
            if best is None or point["val_balanced_accuracy"] > best[0]:
                best = (point["val_balanced_accuracy"], step, _snapshot(model, frozen))
        curve.append(point)
        bar.set_postfix(loss=f"{point['train_loss']:.3f}")
    bar.close()
    if best is None:
        return Fitted(curve, settings.steps)
    _restore(model, best[2], frozen)
    return Fitted(curve, best[1])


def score(evaluators: dict[str, SplitEvaluator], class_names: Sequence[str]) -> dict[str, Any]:
    """Step 4: val, then the held-out test split, each scored once with the chosen weights."""
    return {
        name: evaluators[name].score(class_names) if name in evaluators else None
        for name in ("val", "test")
    }


def write_run(
    run_dir: Path,
    tiles_dir: Path,
    config: SpeciesConfig,
    settings: TrainSettings,
    synthetic_dir: str | Path | None,
    data: TrainData,
    built: Built,
    fitted: Fitted,
    scores: dict[str, Any],
    notes: list[str],
) -> TrainResult:
    """Step 5: weights + card, the curve, then metrics.json (last: it marks a finished run)."""
    few_ids = data.few["tile_id"].tolist()
    card = ModelCard.for_classifier(
        settings.backbone,
        built.spec,
        config,
        mode=settings.mode,
        tiles_dir=tiles_dir,
        data_hashes={
            "tiles_manifest_sha256": sha256_file(manifest_path(tiles_dir)),
            "few_shot_tiles": _hash_ids(few_ids),
            **(
                {"synthetic_manifest_sha256": data.synthetic_sha256}
                if data.synthetic_sha256
                else {}
            ),
            "config_fingerprint": config.fingerprint(),
        },
        training={
            **{k: v for k, v in settings.recorded().items() if k not in ("backbone", "mode")},
            "lr": settings.learning_rate,
            "settings_fingerprint": settings.fingerprint(),
            "best_step": fitted.best_step,
            "n_train": len(few_ids),
            "n_synthetic": data.n_synthetic,
            "few_shot_tile_ids": few_ids,
            "synthetic_dir": str(synthetic_dir) if synthetic_dir is not None else None,
        },
    )
    save_model(built.model.cpu(), card, run_dir)
    plot_curve(fitted.curve, run_dir / CURVE, fitted.best_step)
    metrics: dict[str, Any] = {"best_step": fitted.best_step, "curve": fitted.curve, **scores}
    metrics.update(
        {
            "shots": settings.shots,
            "seed": settings.seed,
            "backbone": settings.backbone,
            "mode": settings.mode,
            "n_train": len(few_ids),
            "n_synthetic": data.n_synthetic,
            "warnings": notes,
        }
    )
    # metrics.json last: its presence marks a finished run (``spurge evaluate`` resumes on it).
    write_text_atomic(run_dir / METRICS, json.dumps(jsonable(metrics), indent=2))
    return TrainResult(run_dir, load_card(run_dir), metrics, len(few_ids), data.n_synthetic, notes)


def _hash_ids(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _snapshot(model: TileClassifier, frozen: bool) -> dict[str, torch.Tensor]:
    source = model.head if frozen else model
    return {k: v.detach().clone() for k, v in source.state_dict().items()}


def _restore(model: TileClassifier, state: dict[str, torch.Tensor], frozen: bool) -> None:
    (model.head if frozen else model).load_state_dict(state)


def plot_curve(curve: list[dict[str, float]], path: Path, best_step: int) -> None:
    """Training loss and validation balanced accuracy against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["train_loss"] for p in curve], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    if any("val_balanced_accuracy" in p for p in curve):
        twin = ax.twinx()
        val = [p.get("val_balanced_accuracy", float("nan")) for p in curve]
        twin.plot(steps, val, color="tab:orange")
        twin.set_ylabel("val balanced accuracy", color="tab:orange")
        twin.set_ylim(0, 1.02)
        twin.axvline(best_step, color="grey", linestyle=":", linewidth=1)
    ax.set_title("spurge train")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
