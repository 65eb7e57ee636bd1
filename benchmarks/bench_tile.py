"""Benchmark: tiles/s of `spurge tile` against a raw rasterio windowed read of the same windows.

Everything is measured in one run on one synthetic orthomosaic, so the printed ratios compare
like with like on whatever machine runs it:

* ``raw read + PNG``: the minimal script (rasterio ``read(window=...)`` + PIL PNG save at the
  same compression level), single-threaded — the same work `spurge tile` must do per tile;
* ``raw read + PNG, N writer threads``: the same script with PNG encoding and writing in a pool
  of as many threads as `spurge tile` uses (``DEFAULT_WORKERS``), reads on the main thread.

Two ratios are printed, each labelled: the **equal-threads** ratio (spurge against the raw
script given the same writer threads: what the code costs beyond the work) and the
**product's** ratio (spurge as shipped against the single-threaded script a user would write:
what the thread pool buys). Also:

* ``raw read only``: rasterio reads, nothing written (an upper bound no writer can reach);
* ``spurge re-run``: `spurge tile` over an up-to-date folder (resume path: reads, compares,
  writes nothing).

Usage: ``python benchmarks/bench_tile.py [--size-px 2048] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from spurge.config import SpeciesConfig
from spurge.io.tiles import read_tile_manifest
from spurge.synthetic import synthesize
from spurge.tiling import DEFAULT_WORKERS, PNG_COMPRESS_LEVEL, tile_grid, tile_plots


def bench_config() -> SpeciesConfig:
    return SpeciesConfig.model_validate(
        {
            "species": "bench",
            "classes": [
                {"name": "absent", "initializer": "grassland"},
                {"name": "present", "initializer": "flowers"},
            ],
            "positive_class": "present",
            "plot_size_m": 6.4,
            "tile_size_px": 64,
            "quarters": True,
            "gsd_m": 0.05,
        }
    )


def _save(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def raw(
    ortho: Path, windows: list[rasterio.windows.Window], out: Path | None, threads: int = 0
) -> float:
    """Seconds for the minimal rasterio loop over ``windows`` (PNG writes when ``out``).

    ``threads`` > 0 encodes and writes the PNGs in a pool of that many threads, as spurge does.
    """
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None
    with rasterio.open(ortho) as src:
        for i, window in enumerate(windows):
            data = src.read([1, 2, 3], window=window)
            if out is not None:
                rgb = np.ascontiguousarray(data.transpose(1, 2, 0))
                if pool is None:
                    _save(rgb, out / f"{i}.png")
                else:
                    pool.submit(_save, rgb, out / f"{i}.png")
    if pool is not None:
        pool.shutdown(wait=True)
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-px", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = bench_config()
    with tempfile.TemporaryDirectory(prefix="spurge-bench-tile-") as tmp:
        root = Path(tmp)
        data = synthesize(root / "synth", config, sites=1, size_px=args.size_px, seed=0)
        ortho = data.orthos[0]
        tile_grid([ortho], config, root / "probe", progress=False)  # warm caches, get windows
        tiles = read_tile_manifest(root / "probe")
        windows = [
            rasterio.windows.Window(r.col_off, r.row_off, r.width, r.height)
            for r in tiles.itertuples()
        ]
        n = len(windows)

        best: dict[str, float] = {}
        for k in range(args.repeats):
            for name in ("raw_png", "raw_png_pool", "spurge", "raw_read", "spurge_rerun"):
                out = root / f"{name}_{k}"
                if name == "raw_png":
                    out.mkdir()
                    seconds = raw(ortho, windows, out)
                elif name == "raw_png_pool":
                    out.mkdir()
                    seconds = raw(ortho, windows, out, threads=DEFAULT_WORKERS)
                elif name == "raw_read":
                    seconds = raw(ortho, windows, None)
                elif name == "spurge":
                    seconds = timed(lambda o=out: tile_grid([ortho], config, o, progress=False))
                else:
                    seconds = timed(
                        lambda o=root / f"spurge_{k}": tile_grid([ortho], config, o, progress=False)
                    )
                best[name] = min(best.get(name, float("inf")), seconds)
                if name != "spurge":
                    shutil.rmtree(out, ignore_errors=True)

        # Plot tiling (9 plots x 4 quarters) for completeness: same read/write path.
        plot_s = timed(
            lambda: tile_plots([ortho], data.plots, config, root / "plots", progress=False)
        )
        rate = {name: n / seconds for name, seconds in best.items()}
        print(
            f"orthomosaic {args.size_px} x {args.size_px} px uint8 RGB, {n} grid tiles of "
            f"{config.tile_size_px} px, best of {args.repeats}"
        )
        print(f"  spurge tile --grid     {rate['spurge']:8.1f} tiles/s")
        print(f"  raw read + PNG write   {rate['raw_png']:8.1f} tiles/s (single-threaded)")
        print(
            f"  raw read + PNG write   {rate['raw_png_pool']:8.1f} tiles/s "
            f"({DEFAULT_WORKERS} writer threads, as spurge)"
        )
        print(f"  raw read only          {rate['raw_read']:8.1f} tiles/s")
        print(f"  spurge re-run (no-op)  {rate['spurge_rerun']:8.1f} tiles/s")
        print(f"  spurge tile plots      {36 / plot_s:8.1f} tiles/s (36 quarter tiles)")
        print(
            f"ratio spurge / (raw read + PNG), equal threads ({DEFAULT_WORKERS} writers each) = "
            f"{rate['spurge'] / rate['raw_png_pool']:.2f} (target >= 0.8)"
        )
        print(
            f"ratio spurge / (raw read + PNG), product's ratio (spurge {DEFAULT_WORKERS} writer "
            f"threads vs single-threaded script) = {rate['spurge'] / rate['raw_png']:.2f}"
        )
        print(f"ratio spurge / raw read only    = {rate['spurge'] / rate['raw_read']:.2f}")
        print(f"ratio re-run / raw read only    = {rate['spurge_rerun'] / rate['raw_read']:.2f}")


if __name__ == "__main__":
    main()
