"""Method comparison: every (method, shots, seed) run, held-out accuracy with 95 % CIs.

Like the DA-Fusion paper's few-shot figures: one classifier per augmentation method, number
of shots and seed, each scored once on the held-out test split, averaged over seeds with a
Student-t 95 % confidence interval. Runs live in ``OUT/runs/<method>/shots_<K>/seed_<S>``;
a run whose ``metrics.json`` exists is finished and skipped, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from spurge.classifier import load_card
from spurge.config import SpeciesConfig
from spurge.errors import ManifestError, SpurgeError
from spurge.io.atomic import atomic_path, ensure_writable_dir, write_text_atomic
from spurge.io.synthetic import SYNTHETIC_MANIFEST
from spurge.io.tiles import manifest_path
from spurge.train import METRICS, load_labelled_tiles, train

#: Methods that need no synthetic store.
BASELINES = {"none": {}, "randaugment": {"randaugment": True}}
RESULTS = "results.csv"
PLOT = "accuracy_vs_shots.png"
SUMMARY = "summary.md"
PLAN = "plan.json"


@dataclass
class EvaluateResult:
    """Per-run results and their per-(method, shots) aggregate."""

    out_dir: Path
    runs: pd.DataFrame
    table: pd.DataFrame
    trained: int
    skipped: int

    def summary(self) -> str:
        best = self.table.loc[self.table.groupby("shots")["test_bacc_mean"].idxmax()]
        wins = ", ".join(
            f"{int(r.shots)} shots: {r.method} ({r.test_bacc_mean:.3f})" for r in best.itertuples()
        )
        return (
            f"Evaluated {self.runs['method'].nunique()} method(s) x "
            f"{self.runs['shots'].nunique()} shot count(s) x {self.runs['seed'].nunique()} "
            f"seed(s) = {len(self.runs)} runs ({self.trained} trained, {self.skipped} already "
            f"finished). Best held-out balanced accuracy per shot count: {wins}. "
            f"Results in {self.out_dir / RESULTS}, plot {self.out_dir / PLOT}, "
            f"summary {self.out_dir / SUMMARY}."
        )


def parse_list(text: str | Sequence[Any], cast: type = str, name: str = "list") -> list[Any]:
    """'1,2,4' -> [1, 2, 4]; a one-line error names the option on bad items."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [cast(str(item).strip()) for item in items if str(item).strip()]
    except ValueError as exc:
        raise SpurgeError(f"--{name}: cannot read {text!r} as comma-separated values") from exc
    if not values:
        raise SpurgeError(f"--{name}: empty list")
    return list(dict.fromkeys(values))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the Student-t 95 % confidence interval (0 for one value)."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(data) == 0:
        return float("nan"), float("nan")
    if len(data) == 1:
        return float(data[0]), 0.0
    half = stats.t.ppf(0.975, len(data) - 1) * data.std(ddof=1) / np.sqrt(len(data))
    return float(data.mean()), float(half)


def evaluate(
    tiles_dir: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    synthetic_root: str | Path | None = None,
    methods: Sequence[str] = ("none", "randaugment", "real-guidance", "da-fusion"),
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = True,
    **train_options: Any,
) -> EvaluateResult:
    """Train and score every (method, shots, seed); write results.csv, the plot and summary.md.

    ``methods`` other than ``none`` and ``randaugment`` read ``synthetic_root/<method>/
    synthetic.parquet``. ``train_options`` go to :func:`spurge.train.train` unchanged
    (backbone, mode, steps, ...). All inputs are checked before the first run starts.
    """
    tiles_dir = Path(tiles_dir)
    out_dir = ensure_writable_dir(out_dir)
    methods, shots, seeds = list(methods), sorted(shots), list(seeds)
    tiles = load_labelled_tiles(tiles_dir, config)
    if (tiles["split"] == "test").sum() == 0:
        raise ManifestError(
            "no test tiles: a method comparison needs held-out tiles (split 'test')",
            manifest_path(tiles_dir),
        )
    train_counts = tiles[tiles["split"] == "train"].groupby("label").size()
    fewest = min(int(train_counts.get(name, 0)) for name in config.class_names)
    if max(shots) > fewest:
        raise ManifestError(
            f"--shots {max(shots)} needs {max(shots)} train tiles per class, the smallest "
            f"class has {fewest}",
            manifest_path(tiles_dir),
        )
    stores: dict[str, Path | None] = {}
    for method in methods:
        if method in BASELINES:
            stores[method] = None
            continue
        if synthetic_root is None:
            raise SpurgeError(
                f"method {method!r} needs --synthetic-root with {method}/{SYNTHETIC_MANIFEST}"
            )
        store = Path(synthetic_root) / method
        if not (store / SYNTHETIC_MANIFEST).is_file():
            raise ManifestError(
                f"no synthetic store for method {method!r}; run `spurge "
                f"augment --method {method}` into this folder",
                store,
            )
        stores[method] = store

    _check_plan(out_dir, tiles_dir, config, train_options)
    rows = []
    trained = skipped = 0
    combos = [(m, k, s) for m in methods for k in shots for s in seeds]
    for method, k, seed in tqdm(
        combos, desc="evaluate", unit="run", disable=None if progress else True
    ):
        run_dir = out_dir / "runs" / method / f"shots_{k}" / f"seed_{seed}"
        if (run_dir / METRICS).is_file():
            load_card(run_dir)  # a finished run must still hold a valid model.json
            skipped += 1
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-run warnings land in metrics.json
                train(
                    tiles_dir,
                    config,
                    run_dir,
                    shots=k,
                    seed=seed,
                    synthetic_dir=stores[method],
                    progress=False,
                    **{**train_options, **BASELINES.get(method, {})},
                )
            trained += 1
        metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
        rows.append(
            {
                "method": method,
                "shots": k,
                "seed": seed,
                "n_train": metrics["n_train"],
                "n_synthetic": metrics["n_synthetic"],
                "best_step": metrics["best_step"],
                "val_balanced_accuracy": (metrics["val"] or {}).get("balanced_accuracy"),
                "test_accuracy": metrics["test"]["accuracy"],
                "test_balanced_accuracy": metrics["test"]["balanced_accuracy"],
                "run_dir": str(run_dir.relative_to(out_dir)),
            }
        )
    runs = pd.DataFrame(rows)
    table = aggregate(runs)
    with atomic_path(out_dir / RESULTS) as tmp:
        runs.to_csv(tmp, index=False, float_format="%.6f")
    plot_accuracy_vs_shots(table, out_dir / PLOT)
    write_text_atomic(out_dir / SUMMARY, summary_markdown(table, runs, train_options))
    return EvaluateResult(out_dir, runs, table, trained, skipped)


def _check_plan(
    out_dir: Path, tiles_dir: Path, config: SpeciesConfig, options: dict[str, Any]
) -> None:
    """Refuse to resume into a folder whose finished runs used other data or settings."""
    plan = {
        "tiles_manifest": str(manifest_path(tiles_dir).resolve()),
        "config_fingerprint": config.fingerprint(),
        "train_options": {
            k: v for k, v in sorted(options.items()) if k not in ("device", "num_workers")
        },
    }
    path = out_dir / PLAN
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(plan)):
            changed = sorted(k for k in plan if previous.get(k) != json.loads(json.dumps(plan))[k])
            raise SpurgeError(
                f"this evaluation folder holds runs made with other {', '.join(changed)}; "
                "use a new --out folder (or delete it) to start over",
                path,
            )
    else:
        write_text_atomic(path, json.dumps(plan, indent=2))


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95 % CI half-width over seeds of held-out (balanced) accuracy."""
    records = []
    for (method, k), group in runs.groupby(["method", "shots"], sort=False):
        bacc, bacc_ci = mean_ci95(group["test_balanced_accuracy"].tolist())
        acc, acc_ci = mean_ci95(group["test_accuracy"].tolist())
        records.append(
            {
                "method": method,
                "shots": k,
                "seeds": len(group),
                "test_bacc_mean": bacc,
                "test_bacc_ci95": bacc_ci,
                "test_acc_mean": acc,
                "test_acc_ci95": acc_ci,
            }
        )
    return pd.DataFrame(records)


def plot_accuracy_vs_shots(table: pd.DataFrame, path: Path) -> None:
    """Held-out balanced accuracy against shots per method, shaded 95 % CIs (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for method, group in table.groupby("method", sort=False):
        group = group.sort_values("shots")
        x, y, ci = group["shots"], group["test_bacc_mean"], group["test_bacc_ci95"]
        ax.plot(x, y, marker="o", label=method)
        ax.fill_between(x, y - ci, y + ci, alpha=0.2)
    ax.set_xscale("log", base=2)
    shots = sorted(table["shots"].unique())
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("examples per class (shots)")
    ax.set_ylabel("held-out balanced accuracy")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0.0, 1.02)
    ax.legend(frameon=False)
    ax.set_title("Few-shot classification, 95 % CI over seeds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def summary_markdown(table: pd.DataFrame, runs: pd.DataFrame, options: dict[str, Any]) -> str:
    """A short markdown report: settings, a methods x shots table, the best method per shot."""
    pivot = table.assign(
        cell=[
            f"{m:.3f} ± {c:.3f}"
            for m, c in zip(table["test_bacc_mean"], table["test_bacc_ci95"], strict=True)
        ]
    ).pivot(index="method", columns="shots", values="cell")
    backbone = options.get("backbone", "efficientnet-lite0")
    header = "| method | " + " | ".join(f"{k} shots" for k in pivot.columns) + " |"
    lines = [
        "# spurge evaluate",
        "",
        f"Held-out (test split) balanced accuracy, mean ± 95 % CI over "
        f"{runs['seed'].nunique()} seed(s); backbone {backbone}, mode "
        f"{options.get('mode', 'linear')}, {options.get('steps', 200)} steps per run.",
        "",
        header,
        "|" + "---|" * (len(pivot.columns) + 1),
    ]
    for method, row in pivot.iterrows():
        lines.append(f"| {method} | " + " | ".join(str(v) for v in row.tolist()) + " |")
    best = table.loc[table.groupby("shots")["test_bacc_mean"].idxmax()]
    lines += [
        "",
        "Best per shot count: "
        + "; ".join(f"{int(r.shots)}: **{r.method}**" for r in best.itertuples())
        + ".",
        "",
    ]
    return "\n".join(lines)
