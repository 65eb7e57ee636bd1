"""Few-shot tile classification (``spurge train``): data, metrics and the run.

:mod:`spurge.train.data` reads tiles and synthetic stores and serves the few-shot set,
:mod:`spurge.train.metrics` scores splits, :mod:`spurge.train.run` holds
:class:`TrainSettings` and :func:`train` (few-shot data -> build -> fit -> score -> write run).
"""

from spurge.train.data import (
    FeatureCache,
    FewShotDataset,
    ImageCache,
    load_labelled_tiles,
    load_tile,
    read_synthetic_store,
    read_tile_png,
    sample_few_shot,
)
from spurge.train.metrics import SplitEvaluator, classification_metrics
from spurge.train.run import (
    CURVE,
    METRICS,
    TrainingWarning,
    TrainResult,
    TrainSettings,
    train,
)

__all__ = [
    "CURVE",
    "METRICS",
    "FeatureCache",
    "FewShotDataset",
    "ImageCache",
    "SplitEvaluator",
    "TrainResult",
    "TrainSettings",
    "TrainingWarning",
    "classification_metrics",
    "load_labelled_tiles",
    "load_tile",
    "read_synthetic_store",
    "read_tile_png",
    "sample_few_shot",
    "train",
]
