"""One-shot GPU check of `spurge augment` with a REAL-SIZE Stable Diffusion 1.5 (random weights).

Builds SD 1.5's architecture (UNet ~860 M parameters, KL VAE, CLIP ViT-L/14 text encoder) with
RANDOM weights directly on the GPU in fp16: speed and memory depend on the architecture, not
on the weights' values; the images are noise. Then prints, each on its own line:

1. sampling at 512 px, fp16, guidance 7.5, strengths 1.0/0.75/0.5/0.25 batched across tiles:
   images/s of spurge (DPM-Solver++ 25 x strength, auto-fitted batch) and of the
   DA-Fusion-style loop (one pipeline call per image, PNDM 50 x strength); UNet evaluations
   per image; the equal-sampler, equal-steps ratio (spurge with PNDM 50) beside it;
   seconds per synthetic image;
2. peak GPU memory (torch.cuda.max_memory_allocated) for the batch the auto-fit chooses on
   this GPU, for the batch it would choose on a 12 GB card, and the largest batch whose peak
   stays under 11.5 GiB (a 12 GB card less the CUDA context);
3. textual inversion at 512 px: seconds per step (and per 1000 steps, DA-Fusion's count)
   and peak memory, without and with gradient checkpointing.

Needs only torch, diffusers, transformers, safetensors, numpy, Pillow, tqdm and open_clip's
BPE file (no open_clip, pydantic, geopandas or rasterio): pass ``--bpe`` or set
``SPURGE_CLIP_BPE``. Must finish within ~4 minutes on an H100/H200.

    PYTHONPATH=. python benchmarks/gpu_augment_check.py --bpe /path/bpe_simple_vocab_16e6.txt.gz
    PYTHONPATH=. python benchmarks/gpu_augment_check.py --tiny   # CPU smoke run, tiny-random
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GiB = 2**30
CARD_BUDGET = 11.5 * GiB  # a 12 GB card less ~0.5 GiB of CUDA context and allocator slack


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on tiny-random")
    parser.add_argument("--bpe", help="open_clip's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--per-tile", type=int, default=8)
    parser.add_argument("--ref-images", type=int, default=4, help="one per strength")
    parser.add_argument("--ti-steps", type=int, default=5, help="timed TI steps per mode")
    parser.add_argument("--ti-batch", type=int, default=8, help="TI batch (DA-Fusion: 8)")
    parser.add_argument("--steps", type=int, default=25, help="spurge's steps; reference 2x")
    args = parser.parse_args()
    args.prefix, args.tag, args.target = "gpu_", None, ">= 3x"
    if args.tiny:
        args.tiles, args.per_tile, args.ti_steps, args.ti_batch = 2, 4, 2, 2
        args.steps, args.tag = 4, "miniature model, CPU smoke run"
    return args


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mem_label(device: torch.device) -> str:
    return "peak GPU memory (max_memory_allocated)" if device.type == "cuda" else "peak RSS"


def build(args: argparse.Namespace):
    from spurge.augment.models import (
        RANDOM_WEIGHTS_NOTE,
        LoadedModel,
        build_tiny_random_pipeline,
        configure_memory,
    )
    from spurge.augment.realsize import build_sd15_pipeline, parameter_count

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        pipe = build_tiny_random_pipeline(scheduler="dpm")
        name = "tiny-random (miniature model, CPU smoke run)"
    else:
        device, dtype = torch.device("cuda"), torch.float16
        pipe = build_sd15_pipeline(device=device, dtype=dtype)
        name = "real-size SD 1.5 architecture with RANDOM weights, fp16"
    configure_memory(pipe)
    loaded = LoadedModel(
        pipe=pipe,
        model_id="sd15-random" if not args.tiny else "tiny-random",
        model_hash="0" * 64,
        is_tiny_random=args.tiny,
        device=device,
        dtype=dtype,
        notes=[RANDOM_WEIGHTS_NOTE],
    )
    print(f"model: {name}; UNet {parameter_count(pipe.unet) / 1e6:.0f} M parameters")
    if not args.tiny:
        print(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    return loaded


def make_items(args, loaded, folder: Path, steps: int, strengths):
    from spurge.augment.generate import PlanItem, item_seed

    res = loaded.resolution
    rng = np.random.default_rng(0)
    prompts = ["a drone photo of <present>", "a drone photo of <present> in grassland"]
    items = []
    for t in range(args.tiles):
        path = folder / f"tile{t}.png"
        Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(path)
        for k in range(args.per_tile):
            items.append(
                PlanItem(
                    image_id=f"{t}-{k}",
                    path=f"x/{t}-{k}.png",
                    label="present",
                    source_tile_id=f"t{t}",
                    source_path=str(path),
                    source_size=(res, res),
                    method="da-fusion",
                    prompt=prompts[k % 2],
                    context=None,
                    strength=float(strengths[k % len(strengths)]),
                    seed=item_seed(0, f"t{t}", k),
                    steps=steps,
                    guidance=7.5,
                    token_hash=None,
                )
            )
    return items


class UnetCounter:
    """Per-sample UNet evaluations (a guided batch of 2 x B counts 2 x B)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.count += int(sample.shape[0])


def run_ours(loaded, items, batch_size):
    """(seconds, UNet evaluations per image, images) of spurge's batched sampler."""
    from spurge.augment.generate import BatchSampler, batches_by_strength

    sampler = BatchSampler(loaded, batch_size=batch_size)
    counter = UnetCounter(loaded.pipe.unet)
    sync(loaded.device)
    start = time.perf_counter()
    for batch in batches_by_strength(items, sampler.batch_size):
        sampler.generate(batch)
    sync(loaded.device)
    seconds = time.perf_counter() - start
    counter.handle.remove()
    return seconds, counter.count / len(items), sampler.batch_size


def run_reference(loaded, items):
    from spurge.augment.generate import reference_generate

    counter = UnetCounter(loaded.pipe.unet)
    sync(loaded.device)
    start = time.perf_counter()
    for item in items:
        reference_generate(loaded, item)
    sync(loaded.device)
    counter.handle.remove()
    return time.perf_counter() - start, counter.count / len(items)


def sampling(args, loaded, folder: Path) -> None:
    from spurge.augment.models import make_scheduler

    strengths = (1.0, 0.75, 0.5, 0.25)
    ours_steps, ref_steps = args.steps, 2 * args.steps
    prefix = args.prefix
    base = dict(loaded.pipe.scheduler.config)
    items = make_items(args, loaded, folder, ours_steps, strengths)
    warm = make_items(args, loaded, folder, 2, (1.0, 0.5))[:2]
    loaded.pipe.scheduler = make_scheduler("dpm", base)
    run_ours(loaded, warm, 2)  # kernel selection and allocator warm-up, not timed
    ours_s, ours_evals, batch = run_ours(loaded, items, None)
    n = len(items)
    print(
        f"spurge: {n} images ({args.tiles} tiles x {args.per_tile}) at {loaded.resolution} px, "
        f"DPM-Solver++ {ours_steps} x strength, guidance 7.5, auto batch {batch}: "
        f"{ours_s:.2f} s, {n / ours_s:.3f} images/s, {ours_s / n:.3f} s per synthetic image"
    )
    loaded.pipe.scheduler = make_scheduler("pndm", base)
    ref_items = make_items(args, loaded, folder, ref_steps, strengths)[: args.ref_images]
    reference_generate_warm(loaded, ref_items[-1])
    ref_s, ref_evals = run_reference(loaded, ref_items)
    ref_rate = len(ref_items) / ref_s
    print(
        f"reference (DA-Fusion-style, one pipeline call per image, PNDM {ref_steps} x strength):"
        f" {len(ref_items)} images, {ref_s:.2f} s, {ref_rate:.3f} images/s"
    )
    eq_items = make_items(args, loaded, folder, ref_steps, strengths)
    eq_s, eq_evals, _ = run_ours(loaded, eq_items, None)
    tag = args.tag or f"real-size SD 1.5 {loaded.resolution} px fp16"
    print(
        f"ratio {prefix}unet_evals_per_image = {ours_evals / ref_evals:.3f} "
        f"(spurge DPM {ours_steps} / reference PNDM {ref_steps}: {ours_evals:.1f} / "
        f"{ref_evals:.1f}; {tag}; target <= 0.5)"
    )
    print(
        f"ratio {prefix}unet_evals_equal_steps = {eq_evals / ref_evals:.3f} "
        f"(both PNDM {ref_steps}: "
        f"{eq_evals:.1f} / {ref_evals:.1f}; batching alone saves no evaluations; {tag})"
    )
    print(
        f"ratio {prefix}images_per_s = {n / ours_s / ref_rate:.2f}x (spurge DPM {ours_steps} "
        f"batched / reference PNDM {ref_steps} per-call; {tag}; target {args.target})"
    )
    print(
        f"ratio {prefix}images_per_s_equal_steps = {len(eq_items) / eq_s / ref_rate:.2f}x "
        f"(both PNDM "
        f"{ref_steps}: batching and encode caching only; {tag})"
    )
    print(f"figure {prefix}seconds_per_synthetic_image {ours_s / n:.3f} ({tag}, batch {batch})")


def reference_generate_warm(loaded, item) -> None:
    from dataclasses import replace

    from spurge.augment.generate import reference_generate

    reference_generate(loaded, replace(item, steps=2, strength=1.0))


def batch_peak(loaded, folder: Path, batch: int) -> int:
    """Peak memory of one guided batch at strength 0.5 (VAE encode, 2 UNet steps, decode)."""
    from spurge.augment.generate import BatchSampler, PlanItem

    args = argparse.Namespace(tiles=1, per_tile=batch)
    items = make_items(args, loaded, folder, 4, (0.5,))
    assert all(isinstance(i, PlanItem) for i in items)
    reset_peak(loaded.device)
    BatchSampler(loaded, batch_size=batch).generate_batch(items)
    sync(loaded.device)
    return peak_bytes(loaded.device)


def memory(args, loaded, folder: Path) -> None:
    from spurge.augment.generate import BatchSampler, auto_batch_size

    device = loaded.device
    label = mem_label(device)
    auto = BatchSampler(loaded).batch_size
    peak = batch_peak(loaded, folder, auto)
    print(f"figure auto_batch_this_device {auto} ({label} {peak / GiB:.2f} GiB)")
    if device.type != "cuda":
        print("figure batch_under_12GB n/a (CPU run: GPU memory not measured)")
        return
    weights = torch.cuda.memory_allocated(device)
    card = auto_batch_size(loaded, free_bytes=int(12 * 10**9 - 0.5 * GiB - weights))
    card_peak = batch_peak(loaded, folder, card)
    print(
        f"figure auto_batch_12GB_card {card} ({label} {card_peak / GiB:.2f} GiB; weights "
        f"{weights / GiB:.2f} GiB; fits 11.5 GiB: {card_peak <= CARD_BUDGET})"
    )
    best = 0
    for batch in (1, 2, 4, 6, 8, 12, 16, 24, 32):
        peak = batch_peak(loaded, folder, batch)
        print(f"figure batch_peak {batch} {peak / GiB:.2f} GiB ({label}, 512 px fp16 guided)")
        if peak > CARD_BUDGET:
            break
        best = batch
    print(f"figure largest_batch_under_11.5GiB {best} (a 12 GB card less CUDA context)")


def textual_inversion(args, loaded) -> None:
    from spurge.augment.textual_inversion import TokenSettings, TokenTrainer

    res = loaded.resolution
    images = torch.rand(8, 3, res, res) * 2 - 1
    captions = ["a drone photo of <present>", "a photo of <present>"]
    for checkpointing in (False, True):
        settings = TokenSettings(steps=args.ti_steps + 1, batch_size=args.ti_batch)
        reset_peak(loaded.device)
        trainer = TokenTrainer(
            loaded, images, "<present>", "flowers", captions, settings, checkpointing
        )
        trainer.step()  # warm-up, not timed
        sync(loaded.device)
        start = time.perf_counter()
        for _ in range(args.ti_steps):
            trainer.step()
        sync(loaded.device)
        per_step = (time.perf_counter() - start) / args.ti_steps
        peak = peak_bytes(loaded.device)
        trainer.finish()
        del trainer
        mode = "with" if checkpointing else "without"
        print(
            f"figure ti_seconds_per_step_{mode}_checkpointing {per_step:.3f} "
            f"(x1000 steps = {per_step * 1000 / 60:.1f} min; batch {args.ti_batch} at {res} px;"
            f" {mem_label(loaded.device)} {peak / GiB:.2f} GiB)"
        )


def main() -> int:
    args = parse_args()
    if args.bpe:
        os.environ["SPURGE_CLIP_BPE"] = args.bpe
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    loaded = build(args)
    print(f"built in {time.perf_counter() - started:.1f} s")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for section in (sampling, memory, textual_inversion):
            with_dir = section is not textual_inversion
            section_args = (args, loaded, Path(tmp)) if with_dir else (args, loaded)
            try:
                section(*section_args)
            except Exception:  # report and go on: one failure must not hide other figures
                failed += 1
                print(f"FAILED {section.__name__}:", file=sys.stderr)
                traceback.print_exc()
            print(f"[{section.__name__} done at {time.perf_counter() - started:.0f} s]")
    print(f"total {time.perf_counter() - started:.0f} s, {failed} section(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
