"""Few-shot tile classification: sampling, synthetic mixing, the training loop and metrics.

``train`` reads a tiles folder (``tiles.parquet`` from ``spurge tile``), draws K labelled
tiles per class from the train split (whole plots at a time, so the quarters of one plot stay
together), optionally mixes in synthetic images of exactly those tiles from ``spurge augment``
(DA-Fusion's recipe: each draw is replaced by one of its synthetic variants with probability
``synthetic_prob``), picks the best step on the val split and touches the test split once,
at the end. It writes ``model.safetensors`` + ``model.json`` (see :mod:`spurge.classifier`),
``metrics.json`` and ``training_curve.png`` into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from spurge.classifier import (
    ModelCard,
    TileClassifier,
    build_classifier,
    load_card,
    save_model,
)
from spurge.config import SpeciesConfig
from spurge.device import resolve_device
from spurge.errors import ManifestError, SpurgeError
from spurge.io.atomic import (
    atomic_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    sha256_file,
    write_text_atomic,
)
from spurge.io.sources import check_tiles_config
from spurge.io.synthetic import SYNTHETIC_MANIFEST, read_synthetic_manifest
from spurge.io.table import table_path
from spurge.io.tiles import manifest_path, read_tile_manifest, tile_image_path

METRICS = "metrics.json"
CURVE = "training_curve.png"
Mode = Literal["linear", "finetune"]


class TrainingWarning(UserWarning):
    """Something about the data that does not stop training but weakens its result."""


# ------------------------------------------------------------------------------------------
# Data: tiles, few-shot sampling, synthetic store
# ------------------------------------------------------------------------------------------


def load_labelled_tiles(tiles_dir: str | Path, config: SpeciesConfig) -> pd.DataFrame:
    """Labelled tiles of the manifest with their class index; labels must be config classes."""
    check_tiles_config(tiles_dir, config)
    tiles = pd.DataFrame(read_tile_manifest(tiles_dir).drop(columns="geometry"))
    labelled = tiles[tiles["label"].notna() & (tiles["split"] != "unlabelled")].copy()
    unknown = sorted(set(labelled["label"]) - set(config.class_names))
    if unknown:
        raise ManifestError(
            f"tile labels {unknown} are not classes of the config ({config.class_names}); "
            "was the tiles folder made with another config?",
            manifest_path(tiles_dir),
        )
    labelled["target"] = [config.class_index(name) for name in labelled["label"]]
    # A plot is identified by its id, or by the tile itself when the manifest has none.
    labelled["group"] = labelled["plot_id"].fillna(labelled["tile_id"]).astype(str)
    return labelled.reset_index(drop=True)


def sample_few_shot(
    tiles: pd.DataFrame, config: SpeciesConfig, shots: int, seed: int, path: Path | None = None
) -> pd.DataFrame:
    """K train-split tiles per class, drawn plot by plot in an order fixed by ``seed``.

    Plots are shuffled (never single quarters) and their tiles taken until K are reached, so
    a few-shot set is made of whole plots except possibly the last one, which is cut to K.
    """
    train = tiles[tiles["split"] == "train"]
    rng = np.random.default_rng(seed)
    chosen = []
    for class_name in config.class_names:
        rows = train[train["label"] == class_name].sort_values("tile_id")
        if len(rows) < shots:
            raise ManifestError(
                f"class {class_name!r} has {len(rows)} train tiles, fewer than --shots {shots}",
                path,
            )
        groups = sorted(rows["group"].unique())
        order = rng.permutation(len(groups))
        taken: list[pd.DataFrame] = []
        count = 0
        for g in order:
            plot_tiles = rows[rows["group"] == groups[g]]
            taken.append(plot_tiles.head(shots - count))
            count += len(taken[-1])
            if count >= shots:
                break
        chosen.append(pd.concat(taken))
    return pd.concat(chosen).reset_index(drop=True)


def read_synthetic_store(
    synthetic_dir: str | Path, tiles: pd.DataFrame, config: SpeciesConfig
) -> pd.DataFrame:
    """Read ``synthetic.parquet`` and check it was built from these tiles with this config."""
    store = read_synthetic_manifest(synthetic_dir, config_fingerprint=config.fingerprint())
    path = table_path(synthetic_dir, SYNTHETIC_MANIFEST)
    unknown_labels = sorted(set(store["label"].dropna()) - set(config.class_names))
    if unknown_labels:
        raise ManifestError(
            f"synthetic labels {unknown_labels} are not classes of the config", path
        )
    by_id = tiles.set_index("tile_id")["label"]
    foreign = ~store["source_tile_id"].isin(by_id.index)
    if foreign.any():
        example = store.loc[foreign, "source_tile_id"].iloc[0]
        raise ManifestError(
            f"synthetic store was built from other tiles: {int(foreign.sum())} image(s) come "
            f"from tiles not in this tiles folder (e.g. {example!r})",
            path,
        )
    wrong = store["label"].to_numpy() != by_id.loc[store["source_tile_id"]].to_numpy()
    if wrong.any():
        raise ManifestError(
            f"{int(wrong.sum())} synthetic image(s) carry a label other than their source tile's",
            path,
        )
    store = store.copy()
    store.attrs["manifest"] = str(path)
    store["abs_path"] = [str(path.parent / rel) for rel in store["path"]]
    return store


def read_tile_png(path: str | Path) -> np.ndarray:
    """An 8-bit RGB tile image as (H, W, 3) uint8."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise ManifestError(f"cannot read tile image ({type(exc).__name__})", path) from exc


class ImageCache:
    """Decoded tiles at the network's input size, kept in memory: few-shot sets are small and
    every tile is drawn many times, so each PNG is decoded and resized once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._images: dict[str, torch.Tensor] = {}

    def get(self, path: str) -> torch.Tensor:
        image = self._images.get(path)
        if image is None:
            decoded = torch.from_numpy(read_tile_png(path)).permute(2, 0, 1).contiguous()
            image = resize_uint8(decoded, self.size)
            self._images[path] = image
        return image


class FewShotDataset(torch.utils.data.Dataset):
    """Few-shot tiles with DA-Fusion mixing.

    Items are (uint8 (3, S, S) at input size, target, key). ``key`` names the exact image
    (source image x one of the eight flips/rotations) so a frozen backbone's features can be
    cached; it is -1 when RandAugment makes every draw unique. Randomness (synthetic draw,
    flips, RandAugment) uses torch's global generator, which ``train`` seeds and DataLoader
    workers derive from, so runs repeat exactly by seed.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        synthetic: Sequence[Sequence[str]],
        synthetic_prob: float,
        input_size: int,
        randaugment: bool = False,
        augment: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.synthetic = [list(s) for s in synthetic]
        self.synthetic_prob = synthetic_prob
        self.input_size = input_size
        self.augment = augment
        self.cache = ImageCache(input_size)
        all_paths = self.paths + [v for s in self.synthetic for v in s]
        self._ids = {path: k for k, path in enumerate(dict.fromkeys(all_paths))}
        self.randaugment = None
        if randaugment:
            from torchvision.transforms import v2

            self.randaugment = v2.RandAugment()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[index]
        variants = self.synthetic[index]
        if variants and torch.rand(()) < self.synthetic_prob:
            path = variants[int(torch.randint(len(variants), ()))]
        image = self.cache.get(path)
        flip = rotation = 0
        if self.augment:
            # Nadir drone tiles have no "up": all eight flips/rotations are equally real.
            flip = int(torch.rand(()) < 0.5)
            rotation = int(torch.randint(4, ()))
            image = torch.rot90(image.flip(-1) if flip else image, rotation, dims=(-2, -1))
        key = self._ids[path] * 8 + flip * 4 + rotation
        if self.randaugment is not None:
            image = self.randaugment(image)
            key = -1
        return image.contiguous(), self.targets[index], key


class FeatureCache:
    """Frozen-backbone features by dataset key: a linear probe then costs one backbone pass
    per distinct (image, flip, rotation) instead of one per draw."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self._features: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        keys = [int(k) for k in keys]
        fresh: dict[int, int] = {}  # key (or -row for uncacheable draws) -> first batch row
        for row, key in enumerate(keys):
            if key < 0:
                fresh[-row - 1] = row
            elif key not in self._features:
                fresh.setdefault(key, row)
        if fresh:
            out = self.backbone(x[list(fresh.values())])
            computed = dict(zip(fresh, out, strict=True))
            self._features.update({k: v for k, v in computed.items() if k >= 0})
        else:
            computed = {}
        return torch.stack(
            [computed[-row - 1] if key < 0 else self._features[key] for row, key in enumerate(keys)]
        )


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8, antialiased like :func:`preprocess`."""
    if image.shape[-2:] == (size, size):
        return image
    resized = nn.functional.interpolate(
        image[None].float(),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> normalised float, as :func:`spurge.classifier.preprocess` does."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - mean_t) / std_t


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def classification_metrics(
    targets: Sequence[int], predictions: Sequence[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix.

    Balanced accuracy is the mean recall over the classes that occur in ``targets``.
    Rows of the confusion matrix are true classes, columns predicted ones.
    """
    n = len(class_names)
    y = np.asarray(targets, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, p), 1)
    per_class = {}
    recalls = []
    for i, name in enumerate(class_names):
        tp = int(confusion[i, i])
        support = int(confusion[i].sum())
        predicted = int(confusion[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            recalls.append(recall)
    return {
        "n": len(y),
        "accuracy": float((y == p).mean()) if len(y) else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


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


def _hash_ids(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _warn(message: str, collected: list[str]) -> None:
    warnings.warn(message, TrainingWarning, stacklevel=3)
    collected.append(message)


class _Evaluator:
    """Predicts a fixed split; with a frozen backbone its features are computed only once."""

    def __init__(
        self,
        frame: pd.DataFrame,
        tiles_dir: Path,
        model: TileClassifier,
        spec_mean: Sequence[float],
        spec_std: Sequence[float],
        input_size: int,
        frozen: bool,
        device: torch.device,
        batch_size: int,
        desc: str,
    ) -> None:
        self.targets = frame["target"].tolist()
        self.paths = [str(tile_image_path(tiles_dir, p)) for p in frame["path"]]
        self.model, self.mean, self.std = model, spec_mean, spec_std
        self.input_size, self.frozen, self.device = input_size, frozen, device
        self.batch_size, self.desc = batch_size, desc
        self._features: torch.Tensor | None = None

    def _batches(self):
        for start in range(0, len(self.paths), self.batch_size):
            chunk = self.paths[start : start + self.batch_size]
            images = torch.stack(
                [
                    resize_uint8(
                        torch.from_numpy(read_tile_png(p)).permute(2, 0, 1), self.input_size
                    )
                    for p in chunk
                ]
            )
            yield normalise(images.to(self.device), self.mean, self.std)

    @torch.no_grad()
    def predict(self) -> list[int]:
        self.model.eval()
        if self.frozen:
            if self._features is None:
                self._features = torch.cat([self.model.backbone(x) for x in self._batches()])
            logits = self.model.head(self._features)
        else:
            logits = torch.cat([self.model(x) for x in self._batches()])
        return logits.argmax(1).cpu().tolist()


def train(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    shots: int = 16,
    seed: int = 0,
    synthetic_dir: str | Path | None = None,
    backbone: str = "efficientnet-lite0",
    mode: Mode = "linear",
    synthetic_prob: float = 0.5,
    randaugment: bool = False,
    steps: int = 200,
    batch_size: int = 32,
    lr: float | None = None,
    eval_every: int = 25,
    pretrained: bool = True,
    device: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train a few-shot tile classifier and write a run folder; see the module docstring.

    ``mode="linear"`` freezes the backbone (its BatchNorm statistics too) and trains a linear
    head, DA-Fusion's setting; ``"finetune"`` trains everything. ``lr`` defaults to 1e-3 for
    a linear head and 1e-4 for fine-tuning (Adam).
    """
    if mode not in ("linear", "finetune"):
        raise SpurgeError(f"mode must be 'linear' or 'finetune', not {mode!r}")
    if not 0.0 <= synthetic_prob <= 1.0:
        raise SpurgeError(f"--synthetic-prob must lie in [0, 1], got {synthetic_prob}")
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise SpurgeError("steps, batch size and eval interval must be positive")
    tiles_dir = Path(tiles_dir)
    run_dir = ensure_writable_dir(out_dir)
    remove_stale_temporaries(run_dir)
    notes: list[str] = []
    tiles = load_labelled_tiles(tiles_dir, config)
    few = sample_few_shot(tiles, config, shots, seed, manifest_path(tiles_dir))
    val = tiles[tiles["split"] == "val"]
    test = tiles[tiles["split"] == "test"]
    if val.empty:
        _warn("no val tiles: the last step is kept instead of the best on validation", notes)
    if test.empty:
        _warn("no test tiles: no held-out accuracy can be reported", notes)

    synthetic_lists: list[list[str]] = [[] for _ in range(len(few))]
    synthetic_hash = ""
    n_synthetic = 0
    if synthetic_dir is not None:
        store = read_synthetic_store(synthetic_dir, tiles, config)
        by_source = store.groupby("source_tile_id")["abs_path"].apply(sorted).to_dict()
        synthetic_lists = [list(by_source.get(t, [])) for t in few["tile_id"]]
        n_synthetic = sum(len(s) for s in synthetic_lists)
        synthetic_hash = sha256_file(store.attrs["manifest"])
        if n_synthetic == 0:
            _warn(
                "the synthetic store has no images of the sampled few-shot tiles; "
                "training on real tiles only",
                notes,
            )

    torch.manual_seed(seed)
    dev = resolve_device(device)
    model, spec = build_classifier(backbone, len(config.class_names), pretrained=pretrained)
    model.to(dev)
    frozen = mode == "linear"
    if frozen:
        model.backbone.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr or (1e-3 if frozen else 1e-4))
    loss_fn = nn.CrossEntropyLoss()

    dataset = FewShotDataset(
        [str(tile_image_path(tiles_dir, p)) for p in few["path"]],
        few["target"].tolist(),
        synthetic_lists,
        synthetic_prob if n_synthetic else 0.0,
        spec.input_size,
        randaugment=randaugment,
    )
    sampler = torch.utils.data.RandomSampler(
        dataset,
        replacement=True,
        num_samples=steps * batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed + 1),
        persistent_workers=False,
    )
    evaluators = {
        name: _Evaluator(
            frame,
            tiles_dir,
            model,
            spec.mean,
            spec.std,
            spec.input_size,
            frozen,
            dev,
            batch_size,
            name,
        )
        for name, frame in (("val", val), ("test", test))
        if not frame.empty
    }

    curve: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    running = []
    bar = tqdm(
        loader,
        total=steps,
        desc="train",
        unit="step",
        leave=False,
        disable=None if progress else True,
    )
    features_of = FeatureCache(model.backbone) if frozen else None
    for step, (images, targets, keys) in enumerate(bar, start=1):
        model.train(not frozen)  # frozen: keep BatchNorm statistics as pretrained
        x = normalise(images.to(dev), spec.mean, spec.std)
        logits = model(x) if features_of is None else model.head(features_of(x, keys.tolist()))
        loss = loss_fn(logits, targets.to(dev))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            point = {"step": step, "train_loss": float(np.mean(running))}
            running = []
            if "val" in evaluators:
                ev = evaluators["val"]
                point["val_balanced_accuracy"] = classification_metrics(
                    ev.targets, ev.predict(), config.class_names
                )["balanced_accuracy"]
                score = point["val_balanced_accuracy"]
                if best is None or score > best[0]:
                    best = (score, step, _snapshot(model, frozen))
            curve.append(point)
            bar.set_postfix(loss=f"{point['train_loss']:.3f}")
    bar.close()

    best_step = steps
    if best is not None:
        best_step = best[1]
        _restore(model, best[2], frozen)
    metrics: dict[str, Any] = {"best_step": best_step, "curve": curve}
    for name in ("val", "test"):
        ev = evaluators.get(name)
        metrics[name] = (
            classification_metrics(ev.targets, ev.predict(), config.class_names)
            if ev is not None
            else None
        )

    card = ModelCard.for_classifier(
        backbone,
        spec,
        config,
        mode=mode,
        data_hashes={
            "tiles_manifest_sha256": sha256_file(manifest_path(tiles_dir)),
            "few_shot_tiles": _hash_ids(few["tile_id"].tolist()),
            **({"synthetic_manifest_sha256": synthetic_hash} if synthetic_hash else {}),
            "config_fingerprint": config.fingerprint(),
        },
        training={
            "shots": shots,
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "lr": optimiser.param_groups[0]["lr"],
            "synthetic_prob": synthetic_prob,
            "randaugment": randaugment,
            "pretrained": pretrained,
            "best_step": best_step,
            "n_train": len(few),
            "n_synthetic": n_synthetic,
            "few_shot_tile_ids": few["tile_id"].tolist(),
            "synthetic_dir": str(synthetic_dir) if synthetic_dir is not None else None,
        },
        tiles_dir=tiles_dir,
    )
    save_model(model.cpu(), card, run_dir)
    _plot_curve(curve, run_dir / CURVE, best_step)
    metrics.update(
        {
            "shots": shots,
            "seed": seed,
            "backbone": backbone,
            "mode": mode,
            "n_train": len(few),
            "n_synthetic": n_synthetic,
            "warnings": notes,
        }
    )
    # metrics.json last: its presence marks a finished run (``spurge evaluate`` resumes on it).
    write_text_atomic(run_dir / METRICS, json.dumps(_jsonable(metrics), indent=2))
    return TrainResult(run_dir, load_card(run_dir), metrics, len(few), n_synthetic, notes)


def _snapshot(model: TileClassifier, frozen: bool) -> dict[str, torch.Tensor]:
    source = model.head if frozen else model
    return {k: v.detach().clone() for k, v in source.state_dict().items()}


def _restore(model: TileClassifier, state: dict[str, torch.Tensor], frozen: bool) -> None:
    (model.head if frozen else model).load_state_dict(state)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _plot_curve(curve: list[dict[str, float]], path: Path, best_step: int) -> None:
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
        twin.plot(steps, [p.get("val_balanced_accuracy") for p in curve], color="tab:orange")
        twin.set_ylabel("val balanced accuracy", color="tab:orange")
        twin.set_ylim(0, 1.02)
        twin.axvline(best_step, color="grey", linestyle=":", linewidth=1)
    ax.set_title("spurge train")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
