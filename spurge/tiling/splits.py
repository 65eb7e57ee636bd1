"""Train / val / test splits of field plots: whole sites (or one spatial block) for test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spurge.errors import VectorError


def assign_splits(
    plots: pd.DataFrame,
    *,
    test_sites: Sequence[str] | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.2,
    seed: int = 0,
    path: str | Path | None = None,
) -> pd.Series:
    """Split plots (columns site, plot_id, label, x, y) into train / val / test.

    Test takes whole sites (``test_sites``, or about ``test_fraction`` of the sites drawn by
    seed, never all of them); with a single site it takes one spatial block instead: plots
    ordered along the longer axis of their extent, cut into ``round(1 / test_fraction)``
    contiguous strips, one strip drawn by seed. Val takes about ``val_fraction`` of the
    remaining plots per class (whole plots, never a class's last training plot). The result
    is per plot, so a plot's quarters always share a split.
    """
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=plots.index, dtype="string")
    sites = sorted(plots["site"].unique())
    if test_sites:
        unknown = sorted(set(test_sites) - set(sites))
        if unknown:
            raise VectorError(f"test site(s) {unknown} not among the plots' sites {sites}", path)
        split[plots["site"].isin(list(test_sites))] = "test"
    elif len(sites) >= 2:
        n_test = min(len(sites) - 1, max(1, round(len(sites) * test_fraction)))
        chosen = [sites[i] for i in rng.permutation(len(sites))[:n_test]]
        split[plots["site"].isin(chosen)] = "test"
    elif len(plots) >= 2 and test_fraction > 0:
        n_blocks = min(len(plots), max(2, round(1 / test_fraction)))
        axis = "x" if np.ptp(plots["x"]) >= np.ptp(plots["y"]) else "y"
        rank = plots[axis].rank(method="first").to_numpy() - 1
        block = (rank * n_blocks // len(plots)).astype(int)
        split[block == int(rng.integers(n_blocks))] = "test"
    rest = plots[split == "train"]
    for label in sorted(rest["label"].unique()):
        members = rest.index[rest["label"] == label].to_numpy()
        n_val = min(len(members) - 1, math.floor(len(members) * val_fraction + 0.5))
        if n_val > 0:
            split[rng.permutation(members)[:n_val]] = "val"
    return split
