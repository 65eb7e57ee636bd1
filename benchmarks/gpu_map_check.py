"""One-shot GPU check of dense mapping speed (issue 12), for a lent GPU machine.

Prints, for EfficientNet-Lite0 with RANDOM weights (speed does not depend on the weights) in
fp16 autocast on CUDA, over a JPEG-in-TIFF (YCbCr, 512 px tiles, BigTIFF) orthomosaic that it
writes itself into a temporary folder:

- end-to-end dense mapping Mpx/s (parallel read + JPEG decode in background threads, pinned
  host memory, resize/normalise/backbone/CAM on the GPU, cell pooling), block phase only;
- the minutes this implies for 1 km^2 at 1.4 cm GSD (71,000^2 px; target <= 2 min, which
  needs about 42 Mpx/s);
- the decode-only ceiling (read + decode, no model) with 1 thread and with N threads.

Imports only numpy, torch, timm, rasterio and ``spurge/mapping/dense.py`` (loaded by file
path, so geopandas, pydantic and the rest of spurge are not needed). Writes nothing in the
repository.

    python benchmarks/gpu_map_check.py                 # on the GPU machine, 16000^2 px
    python benchmarks/gpu_map_check.py --small         # anywhere (CPU): 2000^2 px, proves it runs
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def load_dense():
    """``spurge.mapping.dense`` (and the ``grid`` module it uses) by file path:
    ``spurge.mapping``'s package ``__init__`` imports geopandas.
    """
    package = types.ModuleType("spurge.mapping")
    package.__path__ = [str(ROOT / "spurge" / "mapping")]
    sys.modules.setdefault("spurge.mapping", package)
    _load("spurge.mapping.grid", ROOT / "spurge" / "mapping" / "grid.py")
    return _load("spurge_dense", ROOT / "spurge" / "mapping" / "dense.py")


def texture(size: int, seed: int = 0) -> np.ndarray:
    """A (3, size, size) uint8 grassland-like texture with yellow-green patches."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, size // 32 + 2, size // 32 + 2)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    fine = rng.random((3, size, size), dtype=np.float32)
    base = np.array([90, 110, 60], np.float32)[:, None, None]
    img = base + 60 * (up - 0.5) + 30 * (fine - 0.5)
    patches = up[0] > 0.85
    img[:, patches] = np.array([190, 200, 60], np.float32)[:, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_ortho(path: Path, side: int, threads: int) -> float:
    """Write a side x side JPEG/YCbCr tiled BigTIFF; returns seconds taken."""
    start = time.perf_counter()
    tile = texture(2048)
    profile = dict(
        driver="GTiff",
        width=side,
        height=side,
        count=3,
        dtype="uint8",
        crs="EPSG:32612",
        transform=from_origin(500000.0, 5200000.0, 0.014, 0.014),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="JPEG",
        photometric="YCBCR",
        jpeg_quality=90,
        bigtiff="YES",
        num_threads=str(threads),
    )
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, 2048):
            h = min(2048, side - y)
            row = np.concatenate(
                [np.roll(tile, 37 * (x // 2048), axis=2) for x in range(0, side, 2048)], axis=2
            )
            dst.write(row[:, :h, :side], window=Window(0, y, side, h))
    return time.perf_counter() - start


def regions(side: int, core: int, window: int, margin: int, dense) -> list[tuple]:
    """(rows, cols) of each block's region: ``core`` px of cells plus margin, on the lattice."""
    out = []
    for y in range(0, side, core):
        for x in range(0, side, core):
            rows = dense.region_bounds(y, min(y + core, side), window, margin, side)
            cols = dense.region_bounds(x, min(x + core, side), window, margin, side)
            out.append(((y, min(y + core, side)), (x, min(x + core, side)), rows, cols))
    return out


def decode_ceiling(path: Path, side: int, threads: int, dense, scaling) -> float:
    """Mpx/s of reading + decoding the whole ortho in 2048 px regions, ``threads`` at once."""
    spans = [
        ((y, min(y + 2048, side)), (x, min(x + 2048, side)))
        for y in range(0, side, 2048)
        for x in range(0, side, 2048)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(
            pool.map(
                lambda s: dense.read_region(str(path), (side, side), s[0], s[1], scaling), spans
            )
        )
    return side * side / 1e6 / (time.perf_counter() - start)


def build_model(dense, device: torch.device, cell: int, margin: int):
    import timm

    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    head = torch.nn.Linear(backbone.num_features, 2)
    features = dense.feature_extractor("efficientnet-lite0", backbone)
    from spurge.transform import TileTransform

    geometry = dense.DenseGeometry(250, 250, 224, 32, cell, cell, margin)
    # The tiled pass (spurge's default): lattice windows as one batch per block.
    batch = 512 if device.type == "cuda" else 16
    transform = TileTransform(size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    return dense.DenseModel(
        features, head, transform, geometry, device, tiled=True, batch_tiles=batch
    )


def starts_inside(side: int, span: tuple[int, int], window: int = 250) -> np.ndarray:
    """Windows-mode window starts (every half window, last flush) inside a region."""
    starts = list(range(0, side - window + 1, window // 2))
    if starts[-1] + window < side:
        starts.append(side - window)
    a = np.asarray(starts)
    return a[(a >= span[0]) & (a + window <= span[1])] - span[0]


def map_dense(
    path: Path, side: int, model, dense, scaling, core: int, readers: int, strips: int
) -> tuple[float, int]:
    """Dense map of the whole ortho (reading in background threads); returns seconds, cells."""
    g = model.geometry
    plan = regions(side, core, g.window_x, g.margin, dense)
    cells = -(-side // g.cell_x)
    out = np.full((cells, cells), 255, np.uint8)
    todo: queue.Queue = queue.Queue(maxsize=readers + 1)

    def read(item):
        (y0, y1), (x0, x1), rows, cols = item
        rgb, _, inside = dense.read_region(
            str(path), (side, side), rows, cols, scaling, None, strips
        )
        r_edges = dense.cell_edges(y0 // g.cell_y, -(-y1 // g.cell_y), g.cell_y, side, rows[0])
        c_edges = dense.cell_edges(x0 // g.cell_x, -(-x1 // g.cell_x), g.cell_x, side, cols[0])
        # As spurge's default DenseSettings: windows-mode windows inside the region gate the
        # cells, refined within 0.05 of the threshold.
        refine = dense.Refinement(0.5, 1, g.window_y // 2, g.window_x // 2, 0.05)
        gate = dense.WindowGate(
            starts_inside(side, rows), starts_inside(side, cols), 1, refine, (side, side)
        )
        return item, rgb, inside, r_edges, c_edges, gate

    def producer():
        with ThreadPoolExecutor(max_workers=readers) as pool:
            for fut in [pool.submit(read, item) for item in plan]:
                todo.put(fut.result())
        todo.put(None)

    start = time.perf_counter()
    threading.Thread(target=producer, daemon=True).start()
    while (got := todo.get()) is not None:
        ((y0, _), (x0, _), rows, cols), rgb, inside, r_edges, c_edges, gate = got
        origin = (rows[0], cols[0])
        probs, _ = dense.cell_probabilities(model, rgb, inside, origin, r_edges, c_edges, gate)
        r, c = y0 // g.cell_y, x0 // g.cell_x
        out[r : r + probs.shape[1], c : c + probs.shape[2]] = np.rint(probs[1] * 100)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, int((out != 255).sum())


def backbone_only(model, core: int, repeats: int = 5) -> float:
    """Ortho Mpx/s of the model alone on one block's window batches already on the device."""
    rgb = np.random.default_rng(0).integers(0, 255, (core, core, 3), dtype=np.uint8)
    n = core // model.geometry.window_x
    offsets = np.array([(i, j) for i in range(n) for j in range(n)]) * model.geometry.window_x
    tiles = model.prepare_windows(rgb, (0, core, 0, core), offsets)
    batches = [tiles[i : i + model.batch_tiles] for i in range(0, len(tiles), model.batch_tiles)]
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if model.half
        else torch.autocast("cpu", enabled=False)
    )
    with torch.no_grad(), autocast:
        model.features(batches[0])
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            for batch in batches:
                model.features(batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return repeats * core * core / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="2000^2 px on whatever device")
    parser.add_argument("--side", type=int, default=16000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--core", type=int, default=4500, help="block px (multiple of 4500 = lcm(36, 250))"
    )
    args = parser.parse_args()
    side = 2000 if args.small else args.side
    core = 4500 if args.small else args.core
    dense = load_dense()
    from spurge.io.raster import BandScaling

    scaling = BandScaling((1, 2, 3), (0.0,) * 3, (255.0,) * 3, "uint8")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    threads = max(1, args.threads)
    print(
        f"device: {dense.device_summary(device)}; torch {torch.__version__}; {threads} CPU threads"
    )
    with tempfile.TemporaryDirectory(prefix="gpu_map_check_") as tmp:
        path = Path(tmp) / "ortho_jpeg_ycbcr.tif"
        seconds = write_ortho(path, side, threads)
        with rasterio.open(path) as src:
            print(
                f"ortho: {side}x{side} px, {src.compression}, {src.photometric}, "
                f"tiles {src.block_shapes[0]}, {path.stat().st_size / 2**20:.0f} MiB on disk, "
                f"written in {seconds:.1f} s"
            )
        one = decode_ceiling(path, side, 1, dense, scaling)
        many = decode_ceiling(path, side, threads, dense, scaling)
        print(
            f"decode-only ceiling: {one:.1f} Mpx/s with 1 thread, "
            f"{many:.1f} Mpx/s with {threads} threads"
        )
        model = build_model(dense, device, 36, 2)  # two windows of margin: gate + refinement
        # Warm-up (cuDNN autotuning of the block shapes) on a small ortho of the same blocks.
        warm = Path(tmp) / "warm.tif"
        write_ortho(warm, min(side, 2 * core), threads)
        readers = max(1, min(4, threads // 4))
        strips = max(1, threads // readers)
        map_dense(warm, min(side, 2 * core), model, dense, scaling, core, readers, strips)
        model.cache = dense.CamCache()  # the warm-up's windows must not be cache hits here
        seconds, cells = map_dense(path, side, model, dense, scaling, core, readers, strips)
        per_side = -(-side // 250)
        tiles = per_side * per_side
        print(
            f"windows classified: {model.cache.computed} for {tiles} lattice tiles "
            f"({model.cache.computed / tiles:.2f} per tile; random weights decide how many "
            "are refined, 1.6 on the trained benchmark model)"
        )
        rate = side * side / 1e6 / seconds
        pure = backbone_only(model, core, repeats=1 if args.small else 5)
        print(
            f"backbone alone on one {core} px block's windows held on the device: "
            f"{pure:.1f} ortho Mpx/s"
        )
        minutes = 71000**2 / 1e6 / rate / 60
        label = "miniature CPU run" if args.small else "full size"
        precision = "fp16 autocast" if device.type == "cuda" else "fp32"
        print(
            f"end to end dense ({label}, EfficientNet-Lite0 RANDOM weights, {precision} on "
            f"{device.type}, tiled pass + refined window gate, blocks {core} px + 500 px margins, "
            f"{readers} readers x {strips} "
            f"decode threads): {cells} cells of 36 px in {seconds:.2f} s = {rate:.1f} Mpx/s"
        )
        print(f"ratio e2e_vs_decode_ceiling = {rate / many:.2f} (decode ceiling {many:.1f} Mpx/s)")
        print(
            f"implied time for 1 km^2 at 1.4 cm (71000^2 px): {minutes:.2f} min "
            "(target <= 2 min on one H100, ~42 Mpx/s)"
        )


if __name__ == "__main__":
    main()
