"""Train / val / test splits of field plots: whole sites (or one spatial block) for test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from shapely import STRtree

from spurge.errors import VectorError


def overlap_groups(footprints: Sequence[Any]) -> np.ndarray:
    """Group id per footprint: footprints that overlap (not just touch) share a group.

    Groups are connected components, numbered by their first member, so a plot overlapping
    nothing is its own group.
    """
    parent = list(range(len(footprints)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = STRtree(list(footprints))
    for i, geom in enumerate(footprints):
        for j in tree.query(geom, predicate="intersects"):
            j = int(j)
            if j > i and geom.intersection(footprints[j]).area > 1e-9 * geom.area:
                parent[root(j)] = root(i)
    return np.array([root(i) for i in range(len(footprints))])


def _test_split(
    plots: pd.DataFrame,
    split: pd.Series,
    rng: np.random.Generator,
    test_sites: Sequence[str] | None,
    test_fraction: float,
    path: str | Path | None,
) -> None:
    """Mark whole sites (or, with one site, one spatial block) as test, in place."""
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


def _val_split(
    plots: pd.DataFrame, split: pd.Series, groups: pd.Series, rng: np.random.Generator, vf: float
) -> None:
    """Move about ``vf`` of each class's training plots to val, whole groups at a time."""
    for label in sorted(plots.loc[split == "train", "label"].unique()):
        train = split == "train"
        members = plots.index[train & (plots["label"] == label)].to_numpy()
        n_val = min(len(members) - 1, math.floor(len(members) * vf + 0.5))
        taken = 0
        # Singleton groups draw exactly as a per-plot permutation would.
        for group in rng.permutation(groups[members].to_numpy()) if n_val > 0 else []:
            if taken >= n_val:
                break
            unit = plots.index[(groups == group) & (split == "train")]
            if len(unit) == 0:
                continue
            count = int((plots.loc[unit, "label"] == label).sum())
            left = plots.loc[(split == "train") & ~plots.index.isin(unit), "label"]
            # Never take any class's last training plot (the group may hold other classes).
            if taken + count > n_val or not set(plots.loc[unit, "label"]) <= set(left):
                continue
            split[unit] = "val"
            taken += count


def assign_splits(
    plots: pd.DataFrame,
    *,
    test_sites: Sequence[str] | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.2,
    seed: int = 0,
    path: str | Path | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> pd.Series:
    """Split plots (columns site, plot_id, label, x, y) into train / val / test.

    Test takes whole sites (``test_sites``, or about ``test_fraction`` of the sites drawn by
    seed, never all of them); with a single site it takes one spatial block instead: plots
    ordered along the longer axis of their extent, cut into ``round(1 / test_fraction)``
    contiguous strips, one strip drawn by seed. Val takes about ``val_fraction`` of the
    remaining plots per class (whole plots, never a class's last training plot). The result
    is per plot, so a plot's quarters always share a split. ``groups`` (e.g. from
    :func:`overlap_groups`) keeps plots of one group in one split: a group touched by test
    is all test, and val takes whole groups.
    """
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=plots.index, dtype="string")
    group = pd.Series(
        np.arange(len(plots)) if groups is None else np.asarray(groups), index=plots.index
    )
    _test_split(plots, split, rng, test_sites, test_fraction, path)
    in_test = group.isin(set(group[split == "test"]))
    split[in_test] = "test"
    _val_split(plots, split, group, rng, val_fraction)
    return split
