"""Running the ``spurge tile`` stage: scan orthomosaics, place plots, write tiles.

``tile_plots`` cuts each field plot out of the orthomosaic that covers it completely, as one
tile or 2 x 2 quarter tiles of ``config.tile_size_px``; ``tile_grid`` cuts an unlabelled
grid over whole orthomosaics. Both write 8-bit RGB PNGs and ``tiles.parquet`` (see
:mod:`spurge.io.tiles`) plus ``sources.json`` (:mod:`spurge.io.sources`), which records each
orthomosaic's checksum and 8-bit band scaling. Windows come from
:mod:`spurge.tiling.windows`, splits from :mod:`spurge.tiling.splits`.

Each window (or quarter) is read with rasterio and resampled to ``tile_size_px`` only when its
size differs from it, so at the configured GSD tile pixels are the orthomosaic's own pixels.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from PIL import Image
from pyproj import CRS
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from shapely.geometry import box
from tqdm import tqdm

from spurge.config import SpeciesConfig
from spurge.errors import RasterError, VectorError
from spurge.io.atomic import (
    atomic_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    sha256_file,
)
from spurge.io.paths import refuse_overwriting_inputs
from spurge.io.raster import (
    BandScaling,
    check_bands,
    compute_scaling,
    open_ortho,
    pixel_size_m,
    read_window_rgb8,
)
from spurge.io.sources import SOURCES_FILE, Source, load_sources, write_sources
from spurge.io.tiles import TILE_COLUMNS, manifest_path, write_tile_manifest
from spurge.io.vector import plots_in_crs, read_plots
from spurge.tiling.splits import assign_splits, overlap_groups
from spurge.tiling.windows import (
    grid_windows,
    inside,
    polygon_centres,
    quarter_windows,
    snap_point_window,
)

IMAGES_DIR = "images"
#: Threads encoding and writing PNGs while the main thread reads windows.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
#: zlib level for tile PNGs: level 1 is several times faster than 6 for a few % more bytes.
PNG_COMPRESS_LEVEL = 1


# ---------------------------------------------------------------------------------------------
# Sources: one per orthomosaic
# ---------------------------------------------------------------------------------------------


def _crs_text(crs: Any) -> str:
    """Machine-readable CRS for sources.json and the manifest (EPSG code, else WKT)."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def crs_label(crs: Any) -> str:
    """Short human-readable CRS for summaries: ``EPSG:n``, ``EPSG:a+b`` or its name, no WKT."""
    full = CRS.from_user_input(crs)
    epsg = full.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    codes = [sub.to_epsg() for sub in full.sub_crs_list] if full.is_compound else []
    if codes and all(codes):
        return "EPSG:" + "+".join(str(c) for c in codes)
    return full.name or "unnamed CRS"


def _safe(name: str) -> str:
    """A file-name-safe version of a site or plot id (stable, readable)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.") or "x"


def scan_sources(
    orthos: Sequence[str | Path],
    config: SpeciesConfig,
    previous: dict[str, dict[str, Any]] | None = None,
) -> list[Source]:
    """Open and validate every orthomosaic; checksum and 8-bit scaling for each.

    ``previous`` (an earlier ``sources.json``) lets a re-run skip hashing files whose size
    and modification time have not changed.
    """
    if not orthos:
        raise RasterError("no orthomosaic given")
    previous = previous or {}
    paths = [Path(o).resolve() for o in orthos]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise RasterError("given more than once", dup)
    stems = Counter(_safe(p.stem) for p in paths)
    sources = []
    for path in tqdm(paths, desc="orthomosaics", unit="file", leave=False, disable=None):
        with open_ortho(path) as src:
            check_bands(src, config.bands, config.alpha_band, path)
            stat = path.stat()
            old = previous.get(str(path), {})
            scaling = None
            if old.get("size_bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
                sha = old["sha256"]
                cached = BandScaling.from_dict(old["scaling"])
                if cached.bands == tuple(config.bands):
                    scaling = cached
            else:
                sha = sha256_file(path)
            if scaling is None:
                scaling = compute_scaling(
                    src, config.bands, config.scale_percentiles, config.alpha_band, path
                )
            site = _safe(path.stem)
            if stems[site] > 1:  # two "odm_orthophoto.tif" from different flights
                site = f"{_safe(path.parent.name)}_{site}"
            sources.append(
                Source(
                    path=path,
                    site=site,
                    sha256=sha,
                    crs=_crs_text(src.crs),
                    width=src.width,
                    height=src.height,
                    transform=src.transform,
                    pixel_size_m=pixel_size_m(src),
                    scaling=scaling,
                    size_bytes=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                )
            )
    return sources


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@dataclass
class TileJob:
    """One tile to cut: which window of which source, and its manifest row."""

    tile_id: str
    path: str
    source: Source
    window: Window
    label: str | None
    site: str
    plot_id: str | None
    split: str


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def write_tile_png(path: Path, rgb: np.ndarray) -> bool:
    """Write ``rgb`` as PNG atomically unless the file already holds these pixels."""
    if path.is_file():
        try:
            with Image.open(path) as existing:
                if existing.mode == "RGB" and np.array_equal(np.asarray(existing), rgb):
                    return False
        except OSError:
            pass  # unreadable leftovers are rewritten
    # The tile folders are created and checked once up front: this runs once per tile.
    with atomic_path(path, check_folder=False) as tmp:
        tmp.write_bytes(encode_png(rgb))
    return True


@dataclass
class TileResult:
    """What a tiling run did; ``summary()`` is the paragraph the CLI prints."""

    out_dir: Path
    manifest: Path
    sources_file: Path
    mode: str  # "plots" or "grid"
    n_orthos: int = 0
    n_plots: int = 0
    tiles: int = 0
    written: int = 0
    unchanged: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    nodata_skipped: list[str] = field(default_factory=list)
    reprojected: list[tuple[str, str]] = field(default_factory=list)
    resampled_sites: list[str] = field(default_factory=list)
    black_skipped: list[str] = field(default_factory=list)
    overlapping: list[list[str]] = field(default_factory=list)
    labels_layer: str | None = None
    manifest_written: bool = True

    def summary(self) -> str:
        what = f"{self.n_plots} plot(s) into " if self.mode == "plots" else "a grid of "
        splits = ", ".join(f"{n} {s}" for s, n in self.split_counts.items())
        parts = [
            f"Cut {what}{self.tiles} tile(s) ({splits}) from {self.n_orthos} orthomosaic(s) "
            f"into {self.manifest}: {self.written} image(s) written, {self.unchanged} already "
            "up to date."
        ]
        if self.labels_layer:
            parts.append(f"Plots read from layer {self.labels_layer!r}.")
        if self.label_counts:
            labels = ", ".join(f"{n} {lab}" for lab, n in self.label_counts.items())
            parts.append(f"Tiles per class: {labels}.")
        for src, dst in self.reprojected:
            parts.append(f"Labels reprojected from {src} to {dst}.")
        if self.resampled_sites:
            parts.append(f"Resampled to the configured GSD for {', '.join(self.resampled_sites)}.")
        if self.outside:
            parts.append(
                f"Skipped {len(self.outside)} plot(s) not completely inside any orthomosaic: "
                f"{_examples(self.outside)}."
            )
        if self.nodata_skipped:
            parts.append(
                f"Skipped {len(self.nodata_skipped)} tile(s) that are mostly nodata: "
                f"{_examples(self.nodata_skipped)}."
            )
        if self.black_skipped:
            parts.append(
                f"Warning: skipped {len(self.black_skipped)} tile(s) that are 0 in every band of "
                f"an orthomosaic without a nodata value: {_examples(self.black_skipped)}; if 0 "
                "means no data, set it (gdal_edit.py -a_nodata 0 ORTHO)."
            )
        if self.overlapping:
            groups = ["/".join(g) for g in self.overlapping]
            parts.append(
                f"Warning: {sum(map(len, self.overlapping))} plot(s) overlap other plots "
                f"({_examples(groups)}); each overlapping group is kept in one split."
            )
        parts.append(f"Band scaling per orthomosaic in {self.sources_file}.")
        return " ".join(parts)


def _examples(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _run_jobs(
    jobs: list[TileJob],
    config: SpeciesConfig,
    out_dir: Path,
    result: TileResult,
    progress: bool,
    workers: int,
) -> list[TileJob]:
    """Read, check and write every tile; returns the jobs that produced a tile."""
    out_size = (config.tile_size_px, config.tile_size_px)
    kept: list[TileJob] = []
    for folder in sorted({(out_dir / job.path).parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)  # leftovers of an interrupted run
    by_source: dict[Path, list[TileJob]] = {}
    for job in jobs:
        by_source.setdefault(job.source.path, []).append(job)
    bar = tqdm(
        total=len(jobs), desc="tiles", unit="tile", leave=False, disable=None if progress else True
    )
    # Reads stay on this thread (a rasterio dataset is not thread-safe); PNG encoding and
    # writing, which release the GIL in zlib, overlap with the next reads in a small pool.
    pending: deque[tuple[TileJob, Future[bool]]] = deque()

    def collect(limit: int) -> None:
        while len(pending) > limit:
            job, future = pending.popleft()
            if future.result():
                result.written += 1
            else:
                result.unchanged += 1
            kept.append(job)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for source_path, source_jobs in by_source.items():
            with open_ortho(source_path) as src:
                for job in source_jobs:
                    rgb, valid = read_window_rgb8(
                        src, job.window, job.source.scaling, config.alpha_band, out_size=out_size
                    )
                    bar.update()
                    if 1.0 - float(valid.mean()) > config.max_nodata_fraction:
                        result.nodata_skipped.append(job.tile_id)
                        continue
                    if _untagged_black(src, job.window, job.source, rgb):
                        result.black_skipped.append(job.tile_id)
                        continue
                    pending.append((job, pool.submit(write_tile_png, out_dir / job.path, rgb)))
                    collect(4 * workers)  # bounded memory: a few tiles in flight
        collect(0)
    bar.close()
    return kept


def _untagged_black(src: Any, window: Window, source: Source, rgb: np.ndarray) -> bool:
    """A tile that is 0 in every band of an ortho with no nodata value: an untagged margin."""
    if src.nodata is not None or rgb.any():
        return False  # cheap test first: only all-black 8-bit tiles are read again raw
    raw = src.read(list(source.scaling.bands), window=window)
    return not raw.any()


def _manifest_frame(jobs: list[TileJob], config: SpeciesConfig, crs: str) -> gpd.GeoDataFrame:
    rows, footprints = [], []
    for job in jobs:
        src = job.source
        footprint = box(*window_bounds(job.window, src.transform))
        if src.crs != crs:
            footprint = gpd.GeoSeries([footprint], crs=src.crs).to_crs(crs).iloc[0]
        footprints.append(footprint)
        rows.append(
            {
                "tile_id": job.tile_id,
                "path": job.path,
                "label": job.label,
                "site": job.site,
                "plot_id": job.plot_id,
                "split": job.split,
                "source": str(src.path),
                "source_sha256": src.sha256,
                "row_off": int(job.window.row_off),
                "col_off": int(job.window.col_off),
                "height": int(job.window.height),
                "width": int(job.window.width),
                "crs": src.crs,
                # Ground size of one tile pixel along x (the tile is resampled to tile_size_px).
                "gsd_m": job.window.width * src.pixel_size_m[0] / config.tile_size_px,
            }
        )
    frame = pd.DataFrame(rows, columns=list(TILE_COLUMNS)).astype(TILE_COLUMNS)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(footprints, crs=crs), crs=crs)


def _write_outputs(
    jobs: list[TileJob],
    sources: list[Source],
    config: SpeciesConfig,
    out_dir: Path,
    result: TileResult,
) -> None:
    """Write tiles.parquet and sources.json, leaving them untouched when nothing changed."""
    crs = sources[0].crs
    frame = _manifest_frame(jobs, config, crs)
    existing = manifest_path(out_dir)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    if existing.is_file() and existing.read_bytes() == buffer.getvalue():
        result.manifest_written = False
    else:
        write_tile_manifest(frame, out_dir)
    write_sources(out_dir, sources, config, crs)
    result.split_counts = dict(sorted(Counter(j.split for j in jobs).items()))
    result.label_counts = dict(sorted(Counter(j.label for j in jobs if j.label).items()))
    result.tiles = len(jobs)
    size = config.tile_size_px
    resampled = {
        j.source.site for j in jobs if (int(j.window.width), int(j.window.height)) != (size, size)
    }
    result.resampled_sites = sorted(resampled)


def _refuse_empty(
    kept: list[TileJob], result: TileResult, config: SpeciesConfig, first: Path, what: str
) -> None:
    if kept:
        return
    if result.black_skipped and not result.nodata_skipped:
        raise RasterError(
            f"every {what} is 0 in every band and the orthomosaic has no nodata value; "
            "if 0 means no data, set it (gdal_edit.py -a_nodata 0 ORTHO)",
            first,
        )
    raise RasterError(
        f"every {what} is more than {config.max_nodata_fraction:.0%} nodata; nothing to write",
        first,
    )


def _start(
    out_dir: str | Path, mode: str, inputs: Sequence[str | Path]
) -> tuple[Path, TileResult, dict[str, dict[str, Any]]]:
    """Check and prepare the output folder; nothing is written before the inputs are safe."""
    target = Path(out_dir)
    refuse_overwriting_inputs([target, target / "tiles.parquet", target / SOURCES_FILE], inputs)
    out = ensure_writable_dir(out_dir)
    remove_stale_temporaries(out)
    result = TileResult(
        out_dir=out, manifest=manifest_path(out), sources_file=out / SOURCES_FILE, mode=mode
    )
    return out, result, load_sources(out)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def _place_plots(
    plots: gpd.GeoDataFrame, sources: list[Source], config: SpeciesConfig, result: TileResult
) -> tuple[dict[Any, tuple[Source, Window]], dict[Any, tuple[float, float]]]:
    """Each plot's source and window: the first source whose grid holds the whole window."""
    plot_crs = CRS.from_user_input(plots.crs)
    placed: dict[Any, tuple[Source, Window]] = {}
    centres: dict[Any, tuple[float, float]] = {}
    for source in sources:
        target = CRS.from_user_input(source.crs)
        local = plots_in_crs(plots, target, plots.attrs.get("path"))
        if target != plot_crs:
            pair = (crs_label(plot_crs), crs_label(target))
            if pair not in result.reprojected:
                result.reprojected.append(pair)
        for idx, plot in local.iterrows():
            if idx in placed:
                continue
            geom = plot.geometry  # a point: polygon plots were replaced by their centre
            window = snap_point_window(
                geom.x,
                geom.y,
                source.transform,
                source.pixel_size_m,
                config.plot_size_m,
                even=config.quarters,
            )
            if inside(window, source):
                placed[idx] = (source, window)
                centres[idx] = geom.x, geom.y
    # Report reprojection only for CRSs plots were cut from.
    used = {crs_label(CRS.from_user_input(placed[i][0].crs)) for i in placed}
    result.reprojected = [pair for pair in result.reprojected if pair[1] in used]
    return placed, centres


def _plot_table(
    plots: gpd.GeoDataFrame,
    placed: dict[Any, tuple[Source, Window]],
    centres: dict[Any, tuple[float, float]],
) -> pd.DataFrame:
    """One row per placed plot: site (the ortho's where the plots name none), id, label, x, y."""
    return pd.DataFrame(
        {
            "site": [
                str(plots.at[i, "site"]) if pd.notna(plots.at[i, "site"]) else placed[i][0].site
                for i in placed
            ],
            "plot_id": [str(plots.at[i, "plot_id"]) for i in placed],
            "label": [str(plots.at[i, "label"]) for i in placed],
            "x": [centres[i][0] for i in placed],
            "y": [centres[i][1] for i in placed],
        },
        index=list(placed),
    )


def _plot_jobs(
    table: pd.DataFrame,
    placed: dict[Any, tuple[Source, Window]],
    config: SpeciesConfig,
    labels: Path,
) -> list[TileJob]:
    """One job per tile (or quarter) of every placed plot; refuses colliding file names."""
    jobs: list[TileJob] = []
    for idx, row in table.iterrows():
        source, window = placed[idx]
        site, plot_id = _safe(row["site"]), _safe(row["plot_id"])
        base = plot_id if plot_id.startswith(site) else f"{site}_{plot_id}"
        windows = quarter_windows(window) if config.quarters else [window]
        for k, win in enumerate(windows):
            tile_id = f"{base}_q{k}" if config.quarters else base
            path = f"{IMAGES_DIR}/{site}/{tile_id}.png"
            jobs.append(
                TileJob(
                    tile_id,
                    path,
                    source,
                    win,
                    row["label"],
                    row["site"],
                    row["plot_id"],
                    row["split"],
                )
            )
    dupes = [t for t, n in Counter(j.tile_id for j in jobs).items() if n > 1]
    if dupes:
        raise VectorError(f"plot ids collide once made file-name safe, e.g. {dupes[0]}", labels)
    return jobs


def _overlaps(
    table: pd.DataFrame,
    placed: dict[Any, tuple[Source, Window]],
    crs: Any,
    result: TileResult,
) -> np.ndarray:
    """Overlap group per plot (ground footprints in the plots' CRS); records the groups."""
    footprints = []
    for idx in table.index:
        source, window = placed[idx]
        square = gpd.GeoSeries([box(*window_bounds(window, source.transform))], crs=source.crs)
        footprints.append(square.to_crs(crs).iloc[0])
    groups = overlap_groups(footprints)
    ids = table["plot_id"].to_numpy()
    for group in sorted(set(groups[np.bincount(groups)[groups] > 1])):
        result.overlapping.append([str(p) for p in ids[groups == group]])
    return groups


def tile_plots(
    orthos: Sequence[str | Path],
    labels: str | Path,
    config: SpeciesConfig,
    out_dir: str | Path,
    *,
    labels_crs: str | None = None,
    labels_layer: str | None = None,
    test_sites: Sequence[str] | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    workers: int = DEFAULT_WORKERS,
) -> TileResult:
    """Cut every labelled plot out of the orthomosaic that covers it completely.

    Each plot becomes one tile, or 2 x 2 quarter tiles when ``config.quarters``, of
    ``config.tile_size_px`` pixels, named ``images/<site>/<site>_<plot>_q<k>.png`` (the site
    prefix is dropped when the plot id already starts with it). The first orthomosaic (in
    the given order) that contains a plot's whole window is used. Plots outside every
    orthomosaic are skipped and reported (an error if none is left); tiles with more than
    ``config.max_nodata_fraction`` nodata are skipped and reported. Re-running with the same
    inputs writes nothing; an interrupted run resumes where it stopped.
    """
    labels = Path(labels)
    out, result, previous = _start(out_dir, "plots", [*orthos, labels])
    plots = read_plots(labels, config, crs=labels_crs, layer=labels_layer)
    result.labels_layer = plots.attrs.get("layer")
    plots = polygon_centres(plots, config.plot_size_m, labels)
    plots.attrs["path"] = labels
    sources = scan_sources(orthos, config, previous)
    result.n_orthos = len(sources)
    placed, centres = _place_plots(plots, sources, config, result)
    result.outside = [str(plots.at[i, "plot_id"]) for i in plots.index if i not in placed]
    if not placed:
        raise VectorError(
            f"none of the {len(plots)} plot(s) lies completely inside any of the "
            f"{len(sources)} orthomosaic(s) (check that they cover the same area)",
            labels,
        )
    table = _plot_table(plots, placed, centres)
    groups = _overlaps(table, placed, plots.crs, result)
    table["split"] = assign_splits(
        table,
        test_sites=test_sites,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=seed,
        path=labels,
        groups=groups,
    )
    result.n_plots = len(table)
    jobs = _plot_jobs(table, placed, config, labels)
    refuse_overwriting_inputs([out / job.path for job in jobs], [*orthos, labels])
    kept = _run_jobs(jobs, config, out, result, progress, workers)
    _refuse_empty(kept, result, config, sources[0].path, "tile")
    _write_outputs(kept, sources, config, out, result)
    return result


def tile_grid(
    orthos: Sequence[str | Path],
    config: SpeciesConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    workers: int = DEFAULT_WORKERS,
) -> TileResult:
    """Cut unlabelled tiles over whole orthomosaics (split ``unlabelled``, label null).

    Tiles cover ``tile_size_px * gsd_m`` metres, start at each orthomosaic's top-left corner
    and do not overlap; partial tiles at the right and bottom edges and tiles with more than
    ``config.max_nodata_fraction`` nodata are skipped. Named
    ``images/<site>/<site>_r<row>_c<col>.png`` after their pixel offsets.
    """
    out, result, previous = _start(out_dir, "grid", orthos)
    sources = scan_sources(orthos, config, previous)
    result.n_orthos = len(sources)
    jobs = []
    for source in sources:
        windows = grid_windows(source, config)
        if not windows:
            raise RasterError(
                f"is smaller than one {config.tile_size_px * config.gsd_m:g} m tile", source.path
            )
        for win in windows:
            tile_id = f"{source.site}_r{int(win.row_off):06d}_c{int(win.col_off):06d}"
            jobs.append(
                TileJob(
                    tile_id,
                    f"{IMAGES_DIR}/{source.site}/{tile_id}.png",
                    source,
                    win,
                    None,
                    source.site,
                    None,
                    "unlabelled",
                )
            )
    refuse_overwriting_inputs([out / job.path for job in jobs], [s.path for s in sources])
    kept = _run_jobs(jobs, config, out, result, progress, workers)
    _refuse_empty(kept, result, config, sources[0].path, "grid tile")
    _write_outputs(kept, sources, config, out, result)
    return result
