"""The options several commands share, each defined once (rasterio's ``rio`` style).

Every command that takes a species config, a seed, an output folder or a device takes it
through these decorators, so the flag, its default and its checks cannot drift apart between
commands. Defaults are the library's own constants, never copies of them. Importing this
module stays cheap: choice lists that need torch (the backbones) load on first use.

:class:`LibraryOption` also records which library keywords an option feeds, so that a
:class:`~spurge.errors.SpurgeError` naming a keyword (``param="max_nodata_fraction"``) is shown
with the flag the user typed (``--max-nodata``): see :func:`flag_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from spurge import DEFAULT_SEED
from spurge.config import DEFAULT_CONFIG, shipped_config_names
from spurge.device import DEFAULT_DEVICE, DEVICE_CHOICES, is_device_name

F = TypeVar("F", bound=Callable[..., Any])


class LibraryOption(click.Option):
    """A click option that knows the library keywords it is passed on as.

    Args:
        library_names: Library keywords (besides the option's own ``name``) whose errors
            this flag should be named for, e.g. ``("max_nodata_fraction",)`` for
            ``--max-nodata``.
    """

    def __init__(self, *args: Any, library_names: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.library_names = tuple(library_names)


class LazyChoice(click.Choice[str]):
    """A :class:`click.Choice` whose choices are computed on first use.

    The backbone registry lives in a module that imports torch; ``spurge --help`` should not.
    """

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        # click.Choice.__init__ would read the choices now; that is what this class avoids.
        self._load = load
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        # Not cached: a backbone registered after the first look (a plug-in) still shows.
        return tuple(self._load())

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:
        fixed = tuple(value)
        self._load = lambda: fixed


def flag_for(command: click.Command | None, param: str) -> str | None:
    """The ``--flag`` of ``command`` that feeds the library keyword ``param``, if any."""
    if command is None:
        return None
    for option in command.params:
        names = (option.name, *getattr(option, "library_names", ()))
        if isinstance(option, click.Option) and param in names:
            return max(option.opts, key=len)
    return None


def config_option(func: F) -> F:
    """``--config NAME|FILE``: the species config (passed on as ``config_path``)."""
    names = ", ".join(shipped_config_names())
    return click.option(
        "--config",
        "config_path",
        cls=LibraryOption,
        library_names=("config",),
        default=DEFAULT_CONFIG,
        show_default=True,
        metavar="NAME|FILE",
        help="Species config: a YAML file, or a name looked up as ./configs/NAME.yaml, "
        f"then among the configs shipped with spurge ({names}).",
    )(func)


def seed_option(help: str = "Random seed.") -> Callable[[F], F]:
    """``--seed N``: the run's seed (same seed, same outputs)."""
    return click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help=help)


def out_option(help: str, default: Path | None = None) -> Callable[[F], F]:
    """``--out DIR``: the command's output folder (passed on as ``out_dir``).

    Args:
        help: What the command writes there.
        default: The folder when ``--out`` is not given; ``None`` makes ``--out`` required.
    """
    return click.option(
        "--out",
        "out_dir",
        cls=LibraryOption,
        type=click.Path(path_type=Path),
        required=default is None,
        default=default,
        show_default=default is not None,
        metavar="DIR",
        help=help,
    )


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # Only the spelling is checked here; spurge.device.resolve_device asks the machine.
    if not is_device_name(value):
        raise click.BadParameter(f"{value!r} is not one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    return value


def device_option(help: str = "") -> Callable[[F], F]:
    """``--device auto|cpu|cuda|mps|cuda:N``, resolved by :func:`spurge.device.resolve_device`."""
    base = "auto: CUDA if present, else Apple MPS, else the CPU; a device this machine lacks "
    base += "is an error, never a silent fall-back."
    return click.option(
        "--device",
        cls=LibraryOption,
        default=DEFAULT_DEVICE,
        show_default=True,
        metavar="[" + "|".join(DEVICE_CHOICES) + "|cuda:N]",
        callback=_check_device,
        help=f"{help} {base}".strip(),
    )


def _backbone_names() -> list[str]:
    from spurge.classifier import BACKBONES

    return sorted(BACKBONES)


def _default_backbone() -> str:
    from spurge.classifier import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE


class _LazyDefaultOption(LibraryOption):
    """An option whose default is a callable that ``--help`` shows by value, not "(dynamic)"."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        return super().get_default(ctx, call=True)


def backbone_option(help: str) -> Callable[[F], F]:
    """``--backbone NAME``: one of ``spurge.classifier.BACKBONES``, default ``DEFAULT_BACKBONE``."""
    return click.option(
        "--backbone",
        cls=_LazyDefaultOption,
        type=LazyChoice(_backbone_names),
        default=_default_backbone,
        show_default=True,
        help=help,
    )
