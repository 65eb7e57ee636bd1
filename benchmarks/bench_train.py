"""Benchmark `spurge train`: data-pipeline efficiency and accuracy on the synthetic benchmark.

1. Throughput: training images/s with the full data pipeline (PNG tiles -> cached decode ->
   resize -> flips/rotations -> DataLoader -> normalise -> forward + backward + step) against
   forward + backward + step on pre-loaded tensors, same model and batch, in one run; printed
   as a ratio (target >= 0.8).
2. Accuracy: `spurge synth` orthomosaics, plot quarters cut at the config's tile size, sites
   split train/val/test (test = held-out sites), 16 shots per class, EfficientNet-Lite0
   frozen + linear head; prints held-out balanced accuracy (target >= 0.9).

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
from spurge.synthetic import synthesize
from spurge.train import FewShotDataset, TrainSettings, train


def cut_plot_tiles(
    synth_dir: Path, config: SpeciesConfig, out: Path, splits: dict[str, str]
) -> Path:
    """Quarter tiles of every plot in ``synth_dir/plots.gpkg`` as PNGs + tiles.parquet."""
    plots = gpd.read_file(synth_dir / "plots.gpkg")
    (out / "images").mkdir(parents=True, exist_ok=True)
    plot_px, tile = config.plot_size_px, config.tile_size_px
    rows = []
    for site, group in plots.groupby("site"):
        ortho = synth_dir / f"{site}.tif"
        with rasterio.open(ortho) as src:
            for plot in group.itertuples():
                row, col = src.index(plot.geometry.x, plot.geometry.y)
                top, left = row - plot_px // 2, col - plot_px // 2
                for q in range(4):
                    window = Window(left + tile * (q % 2), top + tile * (q // 2), tile, tile)
                    image = src.read([1, 2, 3], window=window).transpose(1, 2, 0)
                    tile_id = f"{plot.plot_id}_q{q}"
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
    return write_tile_manifest(frame, out).parent


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
    parser.add_argument("--work", type=Path, default=None, help="keep data here")
    args = parser.parse_args()

    config = load_config("leafy_spurge")
    work = args.work or Path(tempfile.mkdtemp(prefix="spurge-bench-train-"))
    start = time.perf_counter()
    synth = synthesize(
        work / "synth", config, sites=args.sites, size_px=args.size_px, seed=args.seed
    )
    # Held-out sites: the last one (two from 6 sites on) is test, the one before val.
    names = [p.stem for p in synth.orthos]
    n_test = 2 if len(names) >= 6 else 1
    splits = {n: "train" for n in names} | {names[-n_test - 1]: "val"}
    splits |= {n: "test" for n in names[-n_test:]}
    tiles_dir = cut_plot_tiles(work / "synth", config, work / "tiles", splits)
    present = sum(label == config.positive_class for label in synth.labels)
    print(
        f"data: {args.sites} sites of {args.size_px} px, {len(synth.labels)} plots "
        f"({present} {config.positive_class}), 4 quarter tiles each, test = {names[-n_test:]}, "
        f"val = {names[-n_test - 1]}; tiles in {tiles_dir} ({time.perf_counter() - start:.1f} s)"
    )

    pipe, pre = throughput(tiles_dir, args.backbone, args.bench_steps, args.batch_size)
    print(
        f"throughput ({args.backbone}, finetune, batch {args.batch_size}): full pipeline "
        f"{pipe:.1f} img/s, pre-loaded tensors {pre:.1f} img/s, ratio {pipe / pre:.2f} "
        "(target >= 0.8)"
    )
    print(f"ratio pipeline_vs_preloaded = {pipe / pre:.2f} (target >= 0.8)")

    if not args.skip_accuracy:
        scores = []
        for train_seed in (int(v) for v in args.train_seeds.split(",")):
            start = time.perf_counter()
            result = train(
                tiles_dir,
                config,
                work / f"run_seed{train_seed}",
                TrainSettings(
                    shots=args.shots,
                    seed=train_seed,
                    backbone=args.backbone,
                    mode="linear",
                    steps=args.steps,
                    batch_size=args.batch_size,
                    eval_every=max(args.steps // 4, 1),
                ),
            )
            test = result.test
            scores.append(test["balanced_accuracy"])
            print(
                f"accuracy, seed {train_seed}: {args.shots} shots/class, {args.backbone} frozen, "
                f"{args.steps} steps ({time.perf_counter() - start:.0f} s): held-out sites "
                f"{test['n']} tiles, accuracy {test['accuracy']:.3f}, balanced accuracy "
                f"{test['balanced_accuracy']:.3f}; val balanced accuracy "
                f"{result.val['balanced_accuracy']:.3f}; confusion (rows true "
                f"{result.card.class_names}) {test['confusion_matrix']}"
            )
        print(
            f"held-out balanced accuracy at {args.shots} shots/class over {len(scores)} seed(s): "
            f"mean {np.mean(scores):.3f}, min {min(scores):.3f} (target >= 0.9)"
        )
        print(
            f"ratio heldout_balanced_accuracy_{args.shots}shot = {np.mean(scores):.3f} "
            "(mean over seeds; target >= 0.9)"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
