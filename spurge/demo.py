"""``spurge demo``: the whole pipeline on a synthetic orthomosaic, offline on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from spurge.augment import TokenSettings, augment
from spurge.config import load_config
from spurge.evaluate import evaluate
from spurge.io.manifest import read_tile_manifest
from spurge.mapping import map_orthos
from spurge.synthetic import synthesize
from spurge.tiling import tile_plots
from spurge.train import train

DEMO_SITES = 3
DEMO_SIZE_PX = 2000
DEMO_SHOTS = 8


def run_demo(out_dir: str | Path, seed: int = 0) -> str:
    """Run every stage on synthetic data and return the closing summary."""
    out_dir = Path(out_dir)
    config = load_config("leafy_spurge")
    synth = synthesize(
        out_dir / "synthetic", config, sites=DEMO_SITES, size_px=DEMO_SIZE_PX, seed=seed
    )
    tiles_dir = out_dir / "tiles"
    tiles = tile_plots(synth.orthos, synth.plots, config, tiles_dir)
    # The miniature random Stable Diffusion keeps the demo offline and fast; its images are
    # noise-like, so the comparison below shows the machinery, not DA-Fusion's real gain.
    synthetic = augment(
        tiles_dir,
        config,
        out_dir / "augment" / "da-fusion",
        method="da-fusion",
        model="tiny-random",
        per_tile=1,
        steps=8,
        token_settings=TokenSettings(steps=30, batch_size=4),
        seed=seed,
    )
    run = train(
        tiles_dir,
        config,
        out_dir / "run",
        shots=DEMO_SHOTS,
        seed=seed,
        synthetic_dir=out_dir / "augment" / "da-fusion",
    )
    comparison = evaluate(
        tiles_dir,
        config,
        out_dir / "evaluate",
        synthetic_root=out_dir / "augment",
        methods=("none", "da-fusion"),
        shots=(2, DEMO_SHOTS),
        seeds=(seed,),
    )
    # Map the held-out site: the one whose tiles went to the test split.
    manifest = read_tile_manifest(tiles_dir)
    test_sites = sorted(set(manifest.loc[manifest["split"] == "test", "site"]))
    held_out = [o for o in synth.orthos if o.stem in test_sites] or synth.orthos[-1:]
    maps = map_orthos(held_out, out_dir / "run", out_dir / "maps")
    html = [p for m in maps.maps for k, p in m.outputs.items() if k == "html"]
    test_metrics = run.test or {}
    accuracy = test_metrics.get("balanced_accuracy", test_metrics.get("accuracy"))
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and "images" not in p.parts)
    lines = [
        "spurge demo finished.",
        synth.summary(),
        tiles.summary(),
        synthetic.summary(),
        run.summary(),
        comparison.summary(),
        maps.summary(),
        f"Held-out ({', '.join(test_sites)}) balanced accuracy: "
        + (f"{accuracy:.2f}" if isinstance(accuracy, float) else "n/a"),
        f"Outputs ({len(files)} files; tile and synthetic images not listed):",
        *[f"  {path}" for path in files],
    ]
    if html:
        lines.append(f"Open the map: python -m webbrowser file://{Path(html[0]).resolve()}")
    return "\n".join(lines)
