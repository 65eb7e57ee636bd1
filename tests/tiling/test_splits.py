"""Split rules with exact counts: validation never takes a class's last training plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from spurge.tiling import assign_splits, overlap_groups

#: Plots per class in the two training sites (a class with one plot, one with two, ...).
PER_CLASS = {"solo": 1, "pair": 2, "three": 3, "many": 11}


def _plots() -> pd.DataFrame:
    rows = []
    for site in ("north", "south", "held_out"):
        for label, n in PER_CLASS.items():
            for i in range(n):
                rows.append({"site": site, "plot_id": f"{label}{i}", "label": label})
    frame = pd.DataFrame(rows)
    frame["x"] = np.arange(len(frame), dtype=float)
    frame["y"] = 0.0
    return frame


@pytest.mark.parametrize("val_fraction", [0.0, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", range(5))
def test_val_takes_exact_counts_and_never_a_class_last_training_plot(
    val_fraction: float, seed: int
) -> None:
    plots = _plots()
    split = assign_splits(plots, test_sites=["held_out"], val_fraction=val_fraction, seed=seed)
    assert (split[plots["site"] == "held_out"] == "test").all()
    assert (split[plots["site"] != "held_out"] != "test").all()
    for label, n in PER_CLASS.items():
        pool = 2 * n  # two training sites
        mine = split[(plots["label"] == label) & (plots["site"] != "held_out")]
        expected_val = min(pool - 1, math.floor(pool * val_fraction + 0.5))
        assert int((mine == "val").sum()) == expected_val, (label, seed, val_fraction)
        assert int((mine == "train").sum()) == pool - expected_val >= 1


def test_val_draw_depends_on_the_seed() -> None:
    plots = _plots()
    draws = {
        tuple(assign_splits(plots, test_sites=["held_out"], val_fraction=0.5, seed=s) == "val")
        for s in range(5)
    }
    assert len(draws) > 1


def test_a_class_with_one_training_plot_keeps_it() -> None:
    plots = _plots()
    plots = plots[(plots["label"] != "solo") | (plots["site"] != "south")]  # solo: 1 train plot
    for seed in range(10):
        split = assign_splits(plots, test_sites=["held_out"], val_fraction=0.9, seed=seed)
        solo = split[(plots["label"] == "solo") & (plots["site"] != "held_out")]
        assert solo.tolist() == ["train"]


def test_overlap_groups_keep_plots_in_one_split_and_the_last_plot_rule() -> None:
    # Two training plots per class; each "a" plot overlaps one "b" plot (mixed-class groups).
    plots = pd.DataFrame(
        {
            "site": ["s1"] * 4 + ["s2"] * 4,
            "plot_id": [f"p{i}" for i in range(8)],
            "label": ["a", "b", "a", "b"] * 2,
            "x": np.arange(8.0),
            "y": 0.0,
        }
    )
    footprints = [box(i // 2 * 10 + i % 2, 0, i // 2 * 10 + i % 2 + 3, 3) for i in range(8)]
    groups = overlap_groups(footprints)
    assert groups.tolist() == [0, 0, 2, 2, 4, 4, 6, 6]
    for seed in range(8):
        split = assign_splits(plots, test_sites=["s2"], val_fraction=0.5, seed=seed, groups=groups)
        for g in set(groups):
            assert split[groups == g].nunique() == 1
        train = plots[split == "train"]
        assert sorted(train["label"].unique()) == ["a", "b"]  # every class keeps a plot
        assert int((split == "val").sum()) == 2  # one whole group of (a, b)


def test_touching_footprints_are_not_overlaps() -> None:
    footprints = [box(0, 0, 1, 1), box(1, 0, 2, 1), box(1.5, 0, 2.5, 1)]
    assert overlap_groups(footprints).tolist() == [0, 1, 1]


def test_a_mixed_overlap_group_never_takes_another_class_last_plot() -> None:
    """Class b's only training plot overlaps an a plot: val may take a plots for class a,
    but never that group, whatever the seed.
    """
    plots = pd.DataFrame(
        {
            "site": ["s1"] * 4 + ["s2"],
            "plot_id": ["a0", "a1", "a2", "b0", "t0"],
            "label": ["a", "a", "a", "b", "a"],
            "x": np.arange(5.0),
            "y": 0.0,
        }
    )
    groups = np.array([0, 1, 2, 0, 4])  # a0 and b0 overlap
    for seed in range(12):
        split = assign_splits(plots, test_sites=["s2"], val_fraction=0.5, seed=seed, groups=groups)
        assert split[3] == "train" and split[0] == "train", seed
        assert sorted(split[[1, 2]]) == ["val", "val"]  # a's 2 val plots come from a1, a2
