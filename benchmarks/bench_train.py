"""Benchmark `spurge train`: data-pipeline efficiency and accuracy on the synthetic benchmark.

1. Throughput: training images/s with the full data pipeline (PNG tiles -> cached decode ->
   resize -> flips/rotations -> DataLoader -> normalise -> forward + backward + step) against
   forward + backward + step on pre-loaded tensors, same model and batch, in one run; printed
   as a ratio (target >= 0.8).
2. Accuracy: `spurge synth` orthomosaics, plot quarters cut at the config's tile size, sites
   split train/val/test (test = held-out sites), 16 shots per class, EfficientNet-Lite0
   frozen + linear head; prints held-out balanced accuracy (target >= 0.9) on two sets
   with the same seeds and geometry:
   - label-clean: every quarter of a "present" plot holds spurge, so quarter tiles can
     inherit the plot label (the tiler's assumption);
   - realistic (`spurge synth --partial-quarters`): present plots hold spurge in only 1-4
     quarters, as the seed survey's "four-crop and verify" step found, so quarter labels
     are noisy in training and in the test split alike. Scored against the plot labels
     (what `spurge train` reports) and against each quarter's ground truth.
   The label-noise cost is clean minus realistic-vs-quarter-truth balanced accuracy.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --sites 6 --steps 100

Tiles are cut here (not with `spurge tile`) so the benchmark depends on this stage only:
each plot's 2 x 2 quarters carry the plot's field label, as `spurge tile` does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window
from shapely.geometry import box

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's spurge

from spurge.classifier import build_classifier
from spurge.config import SpeciesConfig, load_config
from spurge.io.tiles import write_tile_manifest
from spurge.synthetic import PRESENCE_MIN_COVER, synthesize
from spurge.train import FewShotDataset, TrainSettings, train


def cut_plot_tiles(
    synth_dir: Path, config: SpeciesConfig, out: Path, splits: dict[str, str]
) -> tuple[Path, dict[str, bool]]:
    """Quarter tiles of every plot in ``synth_dir/plots.gpkg`` as PNGs + tiles.parquet, and
    whether each quarter really holds spurge (its ground truth, by tile id).
    """
    plots = gpd.read_file(synth_dir / "plots.gpkg")
    quarter_truth: dict[str, bool] = {}
    (out / "images").mkdir(parents=True, exist_ok=True)
    plot_px, tile = config.plot_size_px, config.tile_size_px
    rows = []
    for site, group in plots.groupby("site"):
        ortho = synth_dir / f"{site}.tif"
        with rasterio.open(ortho) as src, rasterio.open(synth_dir / f"{site}_truth.tif") as gt:
            for plot in group.itertuples():
                row, col = src.index(plot.geometry.x, plot.geometry.y)
                top, left = row - plot_px // 2, col - plot_px // 2
                for q in range(4):
                    window = Window(left + tile * (q % 2), top + tile * (q // 2), tile, tile)
                    image = src.read([1, 2, 3], window=window).transpose(1, 2, 0)
                    tile_id = f"{plot.plot_id}_q{q}"
                    cover = gt.read(1, window=window).mean()
                    quarter_truth[tile_id] = bool(cover >= PRESENCE_MIN_COVER)
                    rel = f"images/{tile_id}.png"
                    Image.fromarray(image).save(out / rel)
                    bounds = rasterio.windows.bounds(window, src.transform)
                    rows.append(
                        {
                            "tile_id": tile_id,
                            "path": rel,
                            "label": plot.label,
                            "site": site,
                            "plot_id": plot.plot_id,
                            "split": splits[site],
                            "source": str(ortho),
                            "source_sha256": "",
                            "row_off": int(window.row_off),
                            "col_off": int(window.col_off),
                            "height": tile,
                            "width": tile,
                            "crs": str(src.crs),
                            "gsd_m": config.gsd_m,
                            "geometry": box(*bounds),
                        }
                    )
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=plots.crs)
    return write_tile_manifest(frame, out).parent, quarter_truth


def scores_against_quarter_truth(
    run_dir: Path, tiles_dir: Path, truth: dict[str, bool], positive: str
) -> float:
    """Held-out balanced accuracy of a run's saved model against each quarter's truth."""
    import pandas as pd

    from spurge.classifier import load_model, predict_proba

    model, card = load_model(run_dir)
    tiles = pd.read_parquet(tiles_dir / "tiles.parquet")
    test = tiles[tiles["split"] == "test"]
    images = np.stack([np.array(Image.open(tiles_dir / p).convert("RGB")) for p in test["path"]])
    predicted = predict_proba(model, card, images).argmax(1) == card.class_names.index(positive)
    actual = np.array([truth[t] for t in test["tile_id"]])
    recalls = [(predicted[actual == c] == c).mean() for c in (False, True) if (actual == c).any()]
    return float(np.mean(recalls))


def throughput(tiles_dir: Path, backbone: str, steps: int, batch: int) -> tuple[float, float]:
    """(pipeline images/s, pre-loaded images/s) for full fine-tuning."""
    import pandas as pd

    from spurge.io.tiles import read_tile_manifest, tile_image_path

    tiles = pd.DataFrame(read_tile_manifest(tiles_dir)).head(32)  # a 16-shot set
    torch.manual_seed(0)
    model, spec = build_classifier(backbone, 2, pretrained=False)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    dataset = FewShotDataset(
        [str(tile_image_path(tiles_dir, p)) for p in tiles["path"]],
        [i % 2 for i in range(len(tiles))],
        [[] for _ in range(len(tiles))],
        0.0,
        spec.transform,
    )
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=(steps + 1) * batch
    )
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler))
    images, targets, _ = next(loader)  # warm-up; PNG decodes are cached as training goes
    step(spec.transform.normalise(images), targets)
    fixed_x, fixed_y = spec.transform.normalise(images), targets
    # The two arms alternate step by step, so load from other processes on a shared machine
    # hits both alike.
    pipeline_s = preloaded_s = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        images, targets, _ = next(loader)
        step(spec.transform.normalise(images), targets)
        pipeline_s += time.perf_counter() - start
        start = time.perf_counter()
        step(fixed_x, fixed_y)
        preloaded_s += time.perf_counter() - start
    pipeline, preloaded = steps * batch / pipeline_s, steps * batch / preloaded_s
    return pipeline, preloaded


def make_set(args: argparse.Namespace, config: SpeciesConfig, work: Path, partial: bool):
    """Synthesise one set of sites and cut its quarter tiles; (tiles dir, truth, summary)."""
    start = time.perf_counter()
    synth = synthesize(
        work / "synth",
        config,
        sites=args.sites,
        size_px=args.size_px,
        seed=args.seed,
        partial_quarters=partial,
    )
    # Held-out sites: the last one (two from 6 sites on) is test, the one before val.
    names = [p.stem for p in synth.orthos]
    n_test = 2 if len(names) >= 6 else 1
    splits = {n: "train" for n in names} | {names[-n_test - 1]: "val"}
    splits |= {n: "test" for n in names[-n_test:]}
    tiles_dir, truth = cut_plot_tiles(work / "synth", config, work / "tiles", splits)
    present = sum(label == config.positive_class for label in synth.labels)
    print(
        f"data ({work.name}): {args.sites} sites of {args.size_px} px, {len(synth.labels)} "
        f"plots ({present} {config.positive_class}), 4 quarter tiles each, test = "
        f"{names[-n_test:]}, val = {names[-n_test - 1]} ({time.perf_counter() - start:.1f} s)"
    )
    return tiles_dir, truth


def accuracy(args, config, tiles_dir: Path, work: Path, truth: dict[str, bool]) -> dict:
    """Mean over training seeds of held-out balanced accuracy, vs labels and vs truth."""
    vs_labels, vs_truth = [], []
    for train_seed in (int(v) for v in args.train_seeds.split(",")):
        start = time.perf_counter()
        settings = TrainSettings(
            shots=args.shots,
            seed=train_seed,
            backbone=args.backbone,
            mode="linear",
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=max(args.steps // 4, 1),
            progress=False,
        )
        result = train(tiles_dir, config, work / f"run_seed{train_seed}", settings)
        test = result.test
        vs_labels.append(test["balanced_accuracy"])
        vs_truth.append(
            scores_against_quarter_truth(result.run_dir, tiles_dir, truth, config.positive_class)
        )
        print(
            f"  {work.name}, seed {train_seed}: {args.shots} shots/class, {args.backbone} "
            f"frozen, {args.steps} steps ({time.perf_counter() - start:.0f} s): held-out "
            f"{test['n']} tiles, balanced accuracy vs plot labels {vs_labels[-1]:.3f}, vs "
            f"quarter truth {vs_truth[-1]:.3f}; confusion (rows true "
            f"{result.card.class_names}) {test['confusion_matrix']}"
        )
    return {"labels": float(np.mean(vs_labels)), "truth": float(np.mean(vs_truth))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=6, help="synthetic sites (>= 3)")
    parser.add_argument("--size-px", type=int, default=2000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="training steps (accuracy)")
    parser.add_argument("--bench-steps", type=int, default=10, help="steps per throughput arm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--train-seeds", default="0,1,2", help="few-shot draws and training seeds (accuracy)"
    )
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="keep data here")
    args = parser.parse_args()

    config = load_config("leafy_spurge")
    work = args.work or Path(tempfile.mkdtemp(prefix="spurge-bench-train-"))
    clean_tiles, clean_truth = make_set(args, config, work / "clean", partial=False)
    if not args.skip_throughput:
        pipe, pre = throughput(clean_tiles, args.backbone, args.bench_steps, args.batch_size)
        print(
            f"throughput ({args.backbone}, finetune, batch {args.batch_size}): full pipeline "
            f"{pipe:.1f} img/s, pre-loaded tensors {pre:.1f} img/s"
        )
        print(
            f"ratio pipeline_vs_preloaded = {pipe / pre:.2f} (same model, batch and steps; "
            "target >= 0.8)"
        )
    if args.skip_accuracy:
        return
    real_tiles, real_truth = make_set(args, config, work / "realistic", partial=True)
    clean = accuracy(args, config, clean_tiles, work / "clean", clean_truth)
    real = accuracy(args, config, real_tiles, work / "realistic", real_truth)
    noisy = label_noise(real_tiles, real_truth, config.positive_class)
    k, n = args.shots, len(args.train_seeds.split(","))
    print(f"figure label_noise_quarters_realistic = {noisy:.3f} (quarter tiles whose plot "
          "label disagrees with their ground truth, fraction of all)")  # fmt: skip
    print(f"ratio heldout_bacc_{k}shot_clean = {clean['labels']:.3f} (label-clean set, mean "
          f"over {n} seed(s); labels = truth; target >= 0.9)")  # fmt: skip
    print(f"ratio heldout_bacc_{k}shot_realistic_vs_labels = {real['labels']:.3f} (realistic "
          f"set, partial quarters; against plot labels, as `spurge train` reports)")  # fmt: skip
    print(f"ratio heldout_bacc_{k}shot_realistic_vs_truth = {real['truth']:.3f} (realistic "
          "set; against each quarter's ground truth)")  # fmt: skip
    print(f"ratio label_noise_cost_{k}shot = {clean['labels'] - real['truth']:.3f} (clean "
          "minus realistic-vs-truth balanced accuracy, same seeds and geometry)")  # fmt: skip


def label_noise(tiles_dir: Path, truth: dict[str, bool], positive: str) -> float:
    """Fraction of quarter tiles whose (plot) label disagrees with their ground truth."""
    import pandas as pd

    tiles = pd.read_parquet(tiles_dir / "tiles.parquet")
    labelled = (tiles["label"] == positive).to_numpy()
    actual = np.array([truth[t] for t in tiles["tile_id"]])
    return float((labelled != actual).mean())


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
