"""``OrthoPlan``: what mapping one orthomosaic needs to know before any window is read.

:func:`plan_ortho` checks the ortho against the model (bands, GSD, size), sizes the windows
and the cell grid, and picks the 8-bit band scaling: the one ``spurge tile`` recorded in the
model's tiles folder when the model was trained on tiles of this very ortho (so a window is
scaled exactly as its training tiles were), else percentiles computed from the ortho itself.
:func:`check_card` refuses a model card that could only fail later, after the map is computed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.crs import CRS

from spurge.classifier import ModelCard
from spurge.errors import ModelError, RasterError, SpurgeError
from spurge.io.raster import BandScaling, check_bands, compute_scaling, open_ortho, pixel_size_m
from spurge.io.sources import load_sources
from spurge.mapping.grid import MapGrid, default_stride
from spurge.mapping.settings import MapSettings

#: Where an ortho's band scaling came from (recorded in ``<name>.map.json``).
SCALING_RECORDED = "recorded by spurge tile"
SCALING_COMPUTED = "computed from the orthomosaic"


class GsdWarning(UserWarning):
    """The orthomosaic's GSD is far from the one the model was trained at."""


@dataclass(frozen=True)
class OrthoPlan:
    """One orthomosaic's window grid, 8-bit scaling and CRS."""

    ortho: Path
    grid: MapGrid
    scaling: BandScaling
    scaling_source: str
    crs: CRS

    @property
    def name(self) -> str:
        return self.ortho.stem


def check_card(card: ModelCard, run_dir: Path) -> None:
    """Refuse a card whose parts disagree, before any window is read."""
    path = run_dir / "model.json"
    if card.positive_class not in card.class_names:
        raise ModelError(
            f"positive_class {card.positive_class!r} is not one of the classes {card.class_names}",
            path,
        )
    try:
        config = card.species_config()
    except ValueError as exc:
        first = " ".join(str(exc).split())[:160]
        raise ModelError(f"the species config in model.json is invalid: {first}", path) from exc
    if config.class_names != card.class_names:
        raise ModelError(
            f"class_names {card.class_names} differ from the config's {config.class_names}", path
        )
    if (card.tile_size_px, card.gsd_m) != (config.tile_size_px, config.gsd_m):
        raise ModelError(
            f"tile_size_px {card.tile_size_px} / gsd_m {card.gsd_m} differ from the config's "
            f"{config.tile_size_px} / {config.gsd_m}",
            path,
        )
    expected = card.tile_size_px * card.gsd_m
    if not math.isclose(card.tile_size_m, expected, rel_tol=1e-6):
        raise ModelError(
            f"tile_size_m {card.tile_size_m} is not tile_size_px x gsd_m "
            f"({card.tile_size_px} x {card.gsd_m} = {expected:.6g})",
            path,
        )


def recorded_scaling(card: ModelCard, ortho: Path) -> BandScaling | None:
    """The scaling ``spurge tile`` recorded for ``ortho`` in the model's tiles folder, if the
    ortho is the very file that was tiled (same size and modification time) and its bands
    are the model's; else None.
    """
    tiles_dir = getattr(card, "tiles_dir", None)
    if not tiles_dir:
        return None
    entry = load_sources(tiles_dir).get(str(ortho.resolve()))
    if entry is None:
        return None
    stat = ortho.stat()
    if (entry.get("size_bytes"), entry.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return None  # changed since it was tiled: its recorded statistics are stale
    scaling = BandScaling.from_dict(entry["scaling"])
    return scaling if scaling.bands == tuple(card.species_config().bands) else None


def _check_gsd(ortho: Path, px: tuple[float, float], card: ModelCard, s: MapSettings) -> None:
    ratio = max(*px, card.gsd_m) / min(*px, card.gsd_m)
    if ratio <= s.gsd_tolerance:
        return
    problem = (
        f"pixel size {px[0]:.4g} x {px[1]:.4g} m is far from the model's training GSD "
        f"{card.gsd_m:.4g} m (x{ratio:.2g})"
    )
    if s.gsd_policy == "refuse":
        raise RasterError(problem + "; use --gsd resample to map anyway", ortho)
    if s.gsd_policy == "warn":
        warnings.warn(
            f"{ortho}: {problem}; windows are resampled to {card.tile_size_px} px",
            GsdWarning,
            stacklevel=4,
        )


def _grid(
    src: Any, ortho: Path, px: tuple[float, float], card: ModelCard, stride: int | None
) -> MapGrid:
    window_w = round(card.tile_size_m / px[0])
    window_h = round(card.tile_size_m / px[1])
    if window_w < 2 or window_h < 2:
        raise RasterError(
            f"pixels of {px[0]:.4g} m are too coarse for {card.tile_size_m} m model windows",
            ortho,
        )
    if src.width < window_w or src.height < window_h:
        raise RasterError(
            f"{src.width}x{src.height} px is smaller than one {card.tile_size_m} m model "
            f"window ({window_w}x{window_h} px)",
            ortho,
        )
    stride_x = stride or default_stride(window_w)
    stride_y = stride or default_stride(window_h)
    if stride_x > window_w or stride_y > window_h:
        raise SpurgeError(
            f"--stride {stride} is larger than a window ({window_w}x{window_h} px): "
            "parts of the ortho would never be seen"
        )
    transform = tuple(src.transform)[:6]
    return MapGrid(src.width, src.height, window_w, window_h, stride_x, stride_y, transform)


def plan_ortho(ortho: Path, card: ModelCard, settings: MapSettings) -> OrthoPlan:
    """Check ``ortho`` against the model and plan its windows, cells and scaling."""
    config = card.species_config()
    with open_ortho(ortho) as src:
        check_bands(src, config.bands, config.alpha_band, ortho)
        px = pixel_size_m(src)
        _check_gsd(ortho, px, card, settings)
        grid = _grid(src, ortho, px, card, settings.stride)
        scaling = recorded_scaling(card, ortho)
        source = SCALING_RECORDED
        if scaling is None:
            scaling = compute_scaling(
                src, config.bands, config.scale_percentiles, config.alpha_band, ortho
            )
            source = SCALING_COMPUTED
        return OrthoPlan(ortho, grid, scaling, source, src.crs)
