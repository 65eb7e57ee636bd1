"""Benchmark `spurge augment` against a DA-Fusion-reference-style loop, in one run.

``--arch tiny`` (default): the MINIATURE tiny-random pipeline, same tiles, same plan
(DA-Fusion: class tokens, context prompts, strengths 1.0/0.75/0.5/0.25). Its images/s ratio
is mostly the reference's per-call overhead around a toy UNet: a miniature-model figure.

- ours: ``augment()`` end to end (DPM-Solver++ 25 steps x strength, batched across tiles,
  each prompt and each source tile encoded once, images + synthetic.parquet written);
- reference: one ``StableDiffusionImg2ImgPipeline`` call per image, prompt and source tile
  re-encoded every call, PNDM 50 steps x strength, as the DA-Fusion code does.

Prints (a) UNet evaluations per synthetic image, ours / reference (target <= 0.5), and
beside it the same with equal sampler and steps (both PNDM 50): the saving comes from the
sampler and step count, not from batching; (b) images/s, ours / reference, and at equal
sampler and steps; (c) wall time of re-running an identical plan / first run (target <= 0.02).

``--arch sd15``: the REAL-SIZE SD 1.5 architecture (random weights, ~860 M UNet parameters).
On CPU it runs REDUCED (64 px by default, 2 tiles x 4 strengths, DPM 4 vs PNDM 8 steps, no
tokens) and says so on every line; on CUDA it runs at 512 px fp16 with the figures of
benchmarks/gpu_augment_check.py. Peak memory: GPU memory on a GPU, RSS on CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_augment.py [--tiles 8] [--per-tile 8]
    python benchmarks/bench_augment.py --arch sd15
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import torch
from PIL import Image
from shapely.geometry import box

from spurge.augment import TokenSettings, augment, load_tokens, train_tokens
from spurge.augment.generate import GenerationSettings, plan_images, reference_generate
from spurge.augment.models import load_model
from spurge.augment.textual_inversion import labelled_train_tiles
from spurge.config import SpeciesConfig
from spurge.io.tiles import write_tile_manifest


def make_tiles(folder: Path, n: int, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        label = "present" if k % 2 else "absent"
        rel = f"images/t{k:03d}.png"
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / rel)
        rows.append(
            {
                "tile_id": f"t{k:03d}",
                "path": rel,
                "label": label,
                "site": "s0",
                "plot_id": f"p{k}",
                "split": "train",
                "source": "s0.tif",
                "source_sha256": "0",
                "row_off": 0,
                "col_off": k * size,
                "height": size,
                "width": size,
                "crs": "EPSG:32612",
                "gsd_m": 0.05,
                "geometry": box(k * 3.2, 0, (k + 1) * 3.2, 3.2),
            }
        )
    write_tile_manifest(gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32612"), folder)
    return folder


class UnetCounter:
    """Counts per-sample UNet evaluations (a CFG batch of 2 x B counts 2 x B)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.count += int(sample.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=8)
    parser.add_argument("--per-tile", type=int, default=8)
    parser.add_argument(
        "--ref-images",
        type=int,
        default=24,
        help="Plan images the slow reference loop runs (tile order, so every "
        "strength appears in the same mix as the whole plan).",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", choices=("tiny", "sd15", "both"), default="tiny")
    parser.add_argument("--sd15-cpu-px", type=int, default=64, help="sd15 resolution on CPU")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.arch in ("tiny", "both"):
        bench_tiny(args)
    if args.arch in ("sd15", "both"):
        bench_sd15(args)


def bench_sd15(args: argparse.Namespace) -> None:
    """Real-size SD 1.5 (random weights): sampling ratios and peak memory, in one run."""
    import resource

    import gpu_augment_check as gpu  # same folder: shared with the one-shot GPU check

    from spurge.augment.models import RANDOM_WEIGHTS_NOTE, LoadedModel, configure_memory
    from spurge.augment.realsize import build_sd15_pipeline

    cuda = args.device.startswith("cuda")
    device = torch.device(args.device)
    dtype = torch.float16 if cuda else torch.float32
    pipe = build_sd15_pipeline(device=device, dtype=dtype)
    configure_memory(pipe)
    loaded = LoadedModel(pipe, "sd15-random", "0" * 64, False, device, dtype, [RANDOM_WEIGHTS_NOTE])
    print(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    run = argparse.Namespace(tiles=4, per_tile=8, ref_images=4, steps=25, prefix="sd15_gpu_")
    run.tag, run.target = "real-size SD 1.5, 512 px fp16, guidance 7.5", ">= 3x"
    if not cuda:
        # A shared 2-core CPU evaluates the real UNet at ~5-10 s per sample even at 128 px:
        # 64 px (8x8 latents) and 4 vs 8 steps keep the run near ten minutes.
        loaded.sample_size = args.sd15_cpu_px
        run.tiles, run.per_tile, run.steps, run.prefix = 2, 4, 4, "sd15_cpu_"
        run.tag = (
            f"real-size SD 1.5 REDUCED: {args.sd15_cpu_px} px, CPU fp32, 2 tiles x 4 strengths, "
            "DPM 4 vs PNDM 8 steps"
        )
        run.target = ">= 1.8x"
    with tempfile.TemporaryDirectory() as tmp:
        gpu.sampling(run, loaded, Path(tmp))
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"figure sd15_peak_gpu_memory {peak:.2f} GiB (max_memory_allocated; {run.tag})")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"figure sd15_peak_rss {peak:.2f} GiB (whole process; {run.tag})")


def bench_tiny(args: argparse.Namespace) -> None:
    """The miniature model: augment() end to end against the reference loop."""
    config = SpeciesConfig(
        species="leafy spurge",
        classes=[
            {"name": "absent", "initializer": "grassland"},
            {"name": "present", "initializer": "flowers"},
        ],
        positive_class="present",
        context_prompts=["grassland", "snow", "mountain"],
        plot_size_m=3.2,
        tile_size_px=32,
        quarters=True,
        gsd_m=0.05,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiles = make_tiles(root / "tiles", args.tiles)
        tokens = train_tokens(
            tiles,
            config,
            root / "tok",
            "tiny-random",
            TokenSettings(steps=2, batch_size=2),
            device=args.device,
            progress=False,
        ).tokens_dir

        ours_model = load_model("tiny-random", device=args.device, sampler="dpm")
        ref_model = load_model("tiny-random", device=args.device, sampler="pndm")
        ours_count, ref_count = UnetCounter(ours_model.pipe.unet), UnetCounter(ref_model.pipe.unet)

        start = time.perf_counter()
        ours = GenerationSettings(per_tile=args.per_tile, steps=25, batch_size=args.batch_size)
        first = augment(
            tiles, config, root / "syn", ours, model=ours_model, tokens_dir=tokens, progress=False
        )
        ours_s = time.perf_counter() - start
        n_images = first.generated

        start = time.perf_counter()
        again = augment(
            tiles, config, root / "syn", ours, model="tiny-random", tokens_dir=tokens,
            progress=False, device=args.device,
        )  # fmt: skip
        rerun_s = time.perf_counter() - start
        assert again.generated == 0

        # Equal sampler, equal steps: ours with PNDM 50 (batching and caching only).
        eq_model = load_model("tiny-random", device=args.device, sampler="pndm")
        eq_count = UnetCounter(eq_model.pipe.unet)
        start = time.perf_counter()
        equal_settings = GenerationSettings(
            per_tile=args.per_tile, steps=50, sampler="pndm", batch_size=args.batch_size
        )
        equal = augment(
            tiles, config, root / "syn_equal", equal_settings, model=eq_model, tokens_dir=tokens,
            progress=False,
        )  # fmt: skip
        eq_s = time.perf_counter() - start

        # The reference loop: same plan items, one pipeline call each, PNDM 50 steps.
        load_tokens(ref_model, tokens, config)
        token_hashes = {c: "" for c in config.class_names}
        plan = plan_images(
            tiles,
            labelled_train_tiles(tiles, config),
            config,
            GenerationSettings(per_tile=args.per_tile, steps=50, sampler="pndm"),
            ref_model.model_hash,
            token_hashes,
        )
        plan = plan[: args.ref_images]
        start = time.perf_counter()
        for item in plan:
            reference_generate(ref_model, item)
        ref_s = time.perf_counter() - start

    ours_evals = ours_count.count / n_images
    ref_evals = ref_count.count / len(plan)
    eq_evals = eq_count.count / equal.generated
    ours_rate, ref_rate = n_images / ours_s, len(plan) / ref_s
    eq_rate = equal.generated / eq_s
    print(
        f"bench_augment: {args.tiles} tiles x {args.per_tile} images, tiny-random MINIATURE "
        f"model on {args.device}, batch {args.batch_size}; reference loop on {len(plan)} of them"
    )
    print(
        f"(a) UNet evaluations per image: ours {ours_evals:.1f} / reference {ref_evals:.1f} "
        f"= {ours_evals / ref_evals:.3f} (target <= 0.5)"
    )
    print(
        f"(b) images/s: ours {ours_rate:.2f} / reference {ref_rate:.2f} "
        f"= {ours_rate / ref_rate:.2f}x (target >= 1.8x on CPU, >= 4x on CUDA fp16)"
    )
    print(
        f"(c) re-run of identical plan {rerun_s:.3f} s / first run {ours_s:.2f} s "
        f"= {rerun_s / ours_s:.4f} (target <= 0.02)"
    )
    # One line per target, for benchmarks/run_all.py's table.
    mini = "miniature tiny-random model"
    print(
        f"ratio unet_evals_per_image = {ours_evals / ref_evals:.3f} (ours DPM 25 / reference "
        f"PNDM 50, {mini}; target <= 0.5)"
    )
    print(
        f"ratio unet_evals_equal_steps = {eq_evals / ref_evals:.3f} (ours PNDM 50 / reference "
        f"PNDM 50: the saving above is all sampler and steps, {mini})"
    )
    print(
        f"ratio images_per_s = {ours_rate / ref_rate:.2f}x (ours DPM 25 batched / reference "
        f"PNDM 50 per call; {mini}: mostly per-call overhead around a toy UNet)"
    )
    print(
        f"ratio images_per_s_equal_steps = {eq_rate / ref_rate:.2f}x (both PNDM 50: batching "
        f"and caching only; {mini})"
    )
    print(
        f"ratio rerun_vs_first_run = {rerun_s / ours_s:.4f} (identical plan re-run / first "
        f"run, {mini}; target <= 0.02)"
    )


if __name__ == "__main__":
    main()
