"""``spurge demo``: the whole pipeline on a synthetic orthomosaic, offline on a laptop CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from spurge import DEFAULT_SEED
from spurge.augment import TINY_RANDOM, GenerationSettings, TokenSettings, augment
from spurge.config import DEFAULT_CONFIG, load_config
from spurge.device import DEFAULT_DEVICE, resolve_device
from spurge.evaluate import evaluate
from spurge.io.tiles import read_tile_manifest
from spurge.mapping import map_orthos
from spurge.synthetic import synthesize
from spurge.tiling import tile_plots
from spurge.train import TrainSettings, train

DEMO_SITES = 3
DEMO_SIZE_PX = 2000
DEMO_SHOTS = 8

T = TypeVar("T")


class StageClock:
    """Wall-clock seconds per stage, for the closing summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, stage: Callable[..., T], *args: object, **kwargs: object) -> T:
        start = time.perf_counter()
        result = stage(*args, **kwargs)
        self.seconds[name] = time.perf_counter() - start
        return result

    def summary(self) -> str:
        parts = [f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items()]
        return f"Stage times: {', '.join(parts)} (total {sum(self.seconds.values()):.0f} s)."


def run_demo(
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    model: str = TINY_RANDOM,
    device: str | None = DEFAULT_DEVICE,
) -> str:
    """Run every stage on synthetic data and return the closing summary.

    ``model`` is the Stable Diffusion model for DA-Fusion: the miniature random-weight one by
    default (offline, CPU, noise-like images), or a hub id / local folder / checkpoint file,
    which then gets DA-Fusion's real settings (1000 token steps, 25 sampling steps, 4 images
    per tile; a GPU is advisable). ``device`` (e.g. ``cpu``, ``cuda``) defaults to a GPU when
    there is one.

    Raises:
        DeviceError: ``device`` is not on this machine (checked before any stage runs).
    """
    out_dir = Path(out_dir)
    resolve_device(device)  # a missing GPU is refused now, not after synth and tile
    config = load_config(DEFAULT_CONFIG)
    clock = StageClock()
    synth = clock.run(
        "synth",
        synthesize,
        out_dir / "synthetic",
        config,
        sites=DEMO_SITES,
        size_px=DEMO_SIZE_PX,
        seed=seed,
    )
    tiles_dir = out_dir / "tiles"
    tiles = clock.run("tile", tile_plots, synth.orthos, synth.plots, config, tiles_dir)
    generation, tokens = _generation(model, seed)
    synthetic = clock.run(
        "augment",
        augment,
        tiles_dir,
        config,
        out_dir / "augment" / "da-fusion",
        generation,
        model=model,
        device=device,
        token_settings=tokens,
    )
    run = clock.run(
        "train",
        train,
        tiles_dir,
        config,
        out_dir / "run",
        TrainSettings(shots=DEMO_SHOTS, seed=seed, device=device),
        synthetic_dir=out_dir / "augment" / "da-fusion",
    )
    comparison = clock.run(
        "evaluate",
        evaluate,
        tiles_dir,
        config,
        out_dir / "evaluate",
        TrainSettings(device=device),
        synthetic_root=out_dir / "augment",
        methods=("none", "da-fusion"),
        shots=(2, DEMO_SHOTS),
        seeds=(seed,),
    )
    # Map the held-out site: the one whose tiles went to the test split.
    manifest = read_tile_manifest(tiles_dir)
    test_sites = sorted(set(manifest.loc[manifest["split"] == "test", "site"]))
    held_out = [o for o in synth.orthos if o.stem in test_sites] or synth.orthos[-1:]
    maps = clock.run("map", map_orthos, held_out, out_dir / "run", out_dir / "maps")
    results = (synth, tiles, synthetic, run, comparison, maps, clock)
    html = [p for m in maps.maps for k, p in m.outputs.items() if k == "html"]
    return _closing(out_dir, results, run.test or {}, test_sites, html)


def _generation(model: str, seed: int) -> tuple[GenerationSettings, TokenSettings]:
    """DA-Fusion settings for the demo's Stable Diffusion ``model``."""
    if model == TINY_RANDOM:
        # The miniature random Stable Diffusion keeps the demo offline and fast; its images are
        # noise-like, so the comparison below shows the machinery, not DA-Fusion's real gain.
        generation = GenerationSettings(method="da-fusion", per_tile=1, steps=8, seed=seed)
        return generation, TokenSettings(steps=30, batch_size=4)
    # A real checkpoint gets DA-Fusion's own settings: 4 images per tile, 25 steps, full tokens.
    generation = GenerationSettings(method="da-fusion", per_tile=4, steps=25, seed=seed)
    return generation, TokenSettings()


def _closing(
    out_dir: Path,
    results: tuple[Any, ...],
    test_metrics: dict[str, Any],
    test_sites: list[str],
    html: list[Path],
) -> str:
    """The demo's last words: each stage's summary, the held-out accuracy, every output file."""
    accuracy = test_metrics.get("balanced_accuracy", test_metrics.get("accuracy"))
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and "images" not in p.parts)
    lines = [
        "spurge demo finished.",
        *(result.summary() for result in results),
        f"Held-out ({', '.join(test_sites)}) balanced accuracy: "
        + (f"{accuracy:.2f}" if isinstance(accuracy, float) else "n/a"),
        f"Outputs ({len(files)} files; tile and synthetic images not listed):",
        *[f"  {path}" for path in files],
    ]
    if html:
        lines.append(f"Open the map: python -m webbrowser file://{Path(html[0]).resolve()}")
    return "\n".join(lines)
