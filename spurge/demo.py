"""``spurge demo``: the whole pipeline on a synthetic orthomosaic, offline on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from spurge.augment import TokenSettings, augment
from spurge.config import load_config
from spurge.synthetic import synthesize
from spurge.tiling import tile_plots

DEMO_SITES = 3
DEMO_SIZE_PX = 2000


def run_demo(out_dir: str | Path, seed: int = 0) -> str:
    """Run every stage that has landed and return the closing summary."""
    out_dir = Path(out_dir)
    config = load_config("leafy_spurge")
    synth = synthesize(
        out_dir / "synthetic", config, sites=DEMO_SITES, size_px=DEMO_SIZE_PX, seed=seed
    )
    tiles = tile_plots(synth.orthos, synth.plots, config, out_dir / "tiles")
    # The miniature random Stable Diffusion keeps the demo offline and fast; its images are
    # noise-like, so the comparison below shows the machinery, not DA-Fusion's real gain.
    synthetic = augment(
        out_dir / "tiles",
        config,
        out_dir / "augment" / "da-fusion",
        method="da-fusion",
        model="tiny-random",
        per_tile=1,
        steps=8,
        token_settings=TokenSettings(steps=30, batch_size=4),
    )
    lines = [
        "spurge demo finished.",
        synth.summary(),
        tiles.summary(),
        synthetic.summary(),
        "Outputs:",
        *[f"  {path}" for path in [*synth.orthos, *synth.truths, synth.plots, synth.manifest]],
        f"  {tiles.manifest}",
    ]
    return "\n".join(lines)
