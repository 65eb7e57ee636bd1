"""Scoring: classification metrics and the evaluator that predicts one fixed split.

``train`` checks the val split with a :class:`SplitEvaluator` every ``eval_every`` steps to
choose the step to keep, then scores the held-out test split exactly once, last, with that
step's weights; tests spy on :meth:`SplitEvaluator.predict` to hold it to that order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spurge.classifier import TileClassifier
from spurge.io.tiles import tile_image_path
from spurge.train.data import load_tile
from spurge.transform import TileTransform


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


class SplitEvaluator:
    """Predicts one fixed split (``name``: val or test) with the model as it is now.

    With a frozen backbone the split's features are computed once and only the head runs on
    later calls.
    """

    def __init__(
        self,
        name: str,
        frame: pd.DataFrame,
        tiles_dir: Path,
        model: TileClassifier,
        transform: TileTransform,
        frozen: bool,
        device: torch.device,
        batch_size: int,
    ) -> None:
        self.name = name
        self.targets = frame["target"].tolist()
        self.paths = [str(tile_image_path(tiles_dir, p)) for p in frame["path"]]
        self.model, self.transform = model, transform
        self.frozen, self.device, self.batch_size = frozen, device, batch_size
        self._features: torch.Tensor | None = None

    def _batches(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.paths), self.batch_size):
            chunk = self.paths[start : start + self.batch_size]
            images = torch.stack([load_tile(p, self.transform) for p in chunk])
            yield self.transform.normalise(images.to(self.device))

    @torch.no_grad()
    def predict(self) -> list[int]:
        """Predicted class index per tile of the split."""
        self.model.eval()
        if self.frozen:
            if self._features is None:
                self._features = torch.cat([self.model.backbone(x) for x in self._batches()])
            logits = self.model.head(self._features)
        else:
            logits = torch.cat([self.model(x) for x in self._batches()])
        return logits.argmax(1).cpu().tolist()

    def score(self, class_names: Sequence[str]) -> dict[str, Any]:
        """:func:`classification_metrics` of the model's current predictions."""
        return classification_metrics(self.targets, self.predict(), class_names)


def jsonable(value: Any) -> Any:
    """``value`` with NaN as None (JSON has no NaN), through nested dicts and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
