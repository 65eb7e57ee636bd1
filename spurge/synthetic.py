"""Procedural drone orthomosaics of rangeland with leafy-spurge patches, for demo and tests.

Each site is a plausible 8-bit RGB orthomosaic at the config's GSD in UTM 12N (EPSG:32612,
western Montana): grass of varying dryness, bare soil, sagebrush with cast shadows, scattered
yellow forbs that look like spurge from the air, cloud shading, and spurge patches of varied
size and density whose yellow-green bracts grow in clumps. A ground-truth presence raster and
nine field-plot centres per site (labelled from that truth, like the botanists' survey) come
with it. Everything follows from the seed: same seed, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from scipy import ndimage, special
from shapely.geometry import Point
from tqdm import tqdm

from spurge.config import SpeciesConfig
from spurge.errors import SpurgeError
from spurge.io.atomic import atomic_path, ensure_writable_dir
from spurge.io.data_manifest import write_dataset_manifest

SYNTH_CRS = "EPSG:32612"
#: Top-left corner of site 0 in UTM 12N metres (western Montana); sites lie 2 km apart.
ORIGIN_EASTING = 300_000.0
ORIGIN_NORTHING = 5_180_000.0
SITE_SPACING_M = 2_000.0
#: Fraction of a plot covered by spurge above which botanists record it as present.
PRESENCE_MIN_COVER = 0.002
#: How far a spurge patch's outline wobbles around its circle (fraction of the radius).
PATCH_ROUGHNESS = 0.3

GRASS_GREEN = np.array([0.40, 0.47, 0.25], dtype=np.float32)
GRASS_DRY = np.array([0.63, 0.58, 0.40], dtype=np.float32)
SOIL = np.array([0.64, 0.55, 0.44], dtype=np.float32)
SAGE = np.array([0.55, 0.60, 0.52], dtype=np.float32)
SPURGE_BRACT = np.array([0.68, 0.72, 0.30], dtype=np.float32)
SPURGE_LEAF = np.array([0.36, 0.47, 0.17], dtype=np.float32)
FORB_YELLOW = np.array([0.93, 0.80, 0.17], dtype=np.float32)

TIFF_PROFILE = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "predictor": 2,
    "interleave": "pixel",
}


@dataclass
class SiteTruth:
    """Plot centres (pixel row/col of the centre corner), their spurge cover and label."""

    centres_px: list[tuple[int, int]]
    cover: list[float]


@dataclass
class SynthResult:
    out_dir: Path
    orthos: list[Path] = field(default_factory=list)
    truths: list[Path] = field(default_factory=list)
    plots: Path | None = None
    manifest: Path | None = None
    labels: list[str] = field(default_factory=list)

    def summary(self) -> str:
        present = sum(label != "absent" for label in self.labels)
        return (
            f"Synthesised {len(self.orthos)} site(s) in {self.out_dir}: "
            f"{len(self.labels)} plots ({present} with spurge, {len(self.labels) - present} "
            f"without) in {self.plots}, ground truth in *_truth.tif, checksums in "
            f"{self.manifest}."
        )


def stable(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to a 2**-24 grid, as float32: the same bits on every CPU.

    Transcendental functions (exp, sin, arctan2, power; numpy, scipy and libm) differ in the
    last bit between CPUs, depending on the SIMD instructions (AVX2, AVX-512) they dispatch
    to. Computed in float64, their results are far closer than the grid step, so rounding
    to the grid gives identical values everywhere, and the float32 arithmetic after it
    (+, -, *, /, each exactly rounded) stays identical too.
    """
    grid = np.float64(2.0**24)
    return (np.rint(np.asarray(values, dtype=np.float64) * grid) / grid).astype(np.float32)


def smooth_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale_px`` across.

    Coarse noise is a random grid spread by separable Gaussian interpolation matrices (two
    matrix products in a fixed order of operations, not BLAS, whose kernels round
    differently on different CPUs); fine noise is blurred white noise.
    """
    height, width = shape
    if scale_px < 8:
        field_ = ndimage.gaussian_filter(
            rng.standard_normal(shape, dtype=np.float32), sigma=scale_px / 2, mode="wrap"
        )
    else:
        rows = _interpolation_matrix(height, scale_px)
        cols = _interpolation_matrix(width, scale_px)
        grid = rng.standard_normal((rows.shape[1], cols.shape[1]), dtype=np.float32)
        field_ = _matmul_in_order(_matmul_in_order(rows, grid), cols.T)
    field_ -= field_.mean(dtype=np.float64).astype(np.float32)
    field_ /= field_.std(dtype=np.float64).astype(np.float32) + np.float32(1e-6)
    return stable(field_)


def _matmul_in_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 ``a @ b`` summed over the inner index in order: bit-identical on any CPU."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    term = np.empty_like(out)
    for k in range(a.shape[1]):
        np.multiply(a[:, k : k + 1], b[k : k + 1, :], out=term)
        out += term
    return out


def _interpolation_matrix(size: int, scale_px: float) -> np.ndarray:
    knots = np.arange(-2, size / scale_px + 3, dtype=np.float64) * scale_px
    pixels = np.arange(size, dtype=np.float64)[:, None] + 0.5
    weights = stable(np.exp(-0.5 * ((pixels - knots[None, :]) / (scale_px * 0.6)) ** 2))
    return weights / weights.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)


def _blend(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """In place: image = image * (1 - mask) + colour * mask, touching only pixels with mask > 0.

    ``colour`` is an RGB triple or an (H, W, 3) image. Most masks here are sparse (plants,
    flowers, shrubs), so indexing beats whole-image arithmetic several times over.
    """
    where = np.nonzero(mask > 0)
    weight = mask[where][:, None]
    pixels = image[where]
    target = colour[where] if colour.ndim == 3 else colour
    image[where] = pixels + weight * (target - pixels)


def _disc(
    radius: float, rng: np.random.Generator, roughness: float = 0.25, falloff: float | None = None
) -> np.ndarray:
    """Irregular disc of about ``radius`` px as a float mask in [0, 1].

    The edge is about two pixels soft; ``falloff`` instead fades from the centre outwards
    with that exponent (patches thinning towards their edges).
    """
    r = int(np.ceil(radius * (1 + roughness))) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    angle = np.arctan2(yy, xx)
    wobble = 1 + roughness * sum(
        rng.uniform(-1, 1) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) / k for k in (2, 3, 5)
    )
    dist = stable(np.hypot(yy, xx) / (radius * wobble))
    if falloff is not None:
        return stable(np.clip(1.0 - dist.astype(np.float64), 0, 1) ** falloff)
    return np.clip((1.0 - dist) * np.float32(radius / 2.0), 0, 1).astype(np.float32)


def _paste(canvas: np.ndarray, patch: np.ndarray, row: int, col: int, op: str = "max") -> None:
    """Combine ``patch`` centred at (row, col) into ``canvas``, clipped at the edges."""
    half_h, half_w = patch.shape[0] // 2, patch.shape[1] // 2
    r0, c0 = row - half_h, col - half_w
    r1, c1 = r0 + patch.shape[0], c0 + patch.shape[1]
    cr0, cc0 = max(r0, 0), max(c0, 0)
    cr1, cc1 = min(r1, canvas.shape[0]), min(c1, canvas.shape[1])
    if cr0 >= cr1 or cc0 >= cc1:
        return
    sub = patch[cr0 - r0 : cr1 - r0, cc0 - c0 : cc1 - c0]
    target = canvas[cr0:cr1, cc0:cc1]
    if op == "max":
        np.maximum(target, sub, out=target)
    else:
        target *= sub


def _gap_to_nearest_plot(row: int, col: int, centres: list[tuple[int, int]], plot_px: int) -> float:
    """Pixels between this plot's square and the nearest other plot's square."""
    return min(
        max(abs(row - r), abs(col - c)) - plot_px for r, c in centres if (r, c) != (row, col)
    )


def _plot_patch(plot_px: int, reach: float, rng: np.random.Generator) -> np.ndarray:
    """Spurge intensity for an infested plot, centred on the plot centre.

    An irregular patch a little off-centre, large enough to reach all four quarters, with a
    random density; it fades out ``reach`` px from the centre (Chebyshev) so it never spills
    into a neighbouring plot, which would then be labelled "present" from a sliver.
    """
    radius = plot_px * rng.uniform(0.75, 1.0)
    density = np.float32(rng.uniform(0.06, 0.55))
    envelope = _disc(radius, rng, roughness=PATCH_ROUGHNESS, falloff=0.6) * density
    offset = rng.uniform(-0.1, 0.1, 2) * plot_px
    shifted = ndimage.shift(envelope, offset, order=1, mode="constant")
    half = envelope.shape[0] // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    fade = np.clip((reach - np.maximum(np.abs(yy), np.abs(xx))) / (0.05 * plot_px), 0, 1)
    return (shifted * fade).astype(np.float32)


def plot_centres(size_px: int, plot_px: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Nine plot centres on a jittered 3 x 3 grid, each plot square fully inside the site."""
    cell = size_px / 3
    slack = max((cell - plot_px) / 2 - 2, 0)
    centres = []
    for i in range(3):
        for j in range(3):
            row = cell * (i + 0.5) + rng.uniform(-slack, slack) * 0.8
            col = cell * (j + 0.5) + rng.uniform(-slack, slack) * 0.8
            centres.append((round(row), round(col)))
    return centres


def render_site(
    size_px: int,
    plot_px: int,
    gsd_m: float,
    rng: np.random.Generator,
    partial_quarters: bool = False,
) -> tuple[np.ndarray, np.ndarray, SiteTruth]:
    """Render one site: RGB uint8 (3, H, W), spurge truth uint8 (H, W), plot truth.

    ``partial_quarters``: an infested plot holds spurge in only some of its 2 x 2 quarters
    (see :func:`_spurge`); the default spreads it over all four.
    """
    shape = (size_px, size_px)
    px_per_m = 1.0 / gsd_m
    centres = plot_centres(size_px, plot_px, rng)
    image, fine, luma = _ground(shape, px_per_m, rng)
    spurge, plot_has_patch = _spurge(image, fine, centres, plot_px, px_per_m, rng, partial_quarters)
    _forbs(image, centres, plot_has_patch, plot_px, px_per_m, rng)
    crowns = _sagebrush_and_light(image, fine, luma, gsd_m, rng)
    spurge &= crowns < 0.5
    rgb = np.clip(image, 0, 255, out=image).astype(np.uint8).transpose(2, 0, 1)
    half = plot_px // 2
    cover = [
        float(spurge[r - half : r - half + plot_px, c - half : c - half + plot_px].mean())
        for r, c in centres
    ]
    truth = SiteTruth(centres_px=centres, cover=cover)
    return np.ascontiguousarray(rgb), spurge.astype(np.uint8), truth


def _ground(
    shape: tuple[int, int], px_per_m: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grass and bare soil as float RGB in [0, 1]; the fine texture and brightness fields."""
    # Grass: dryness varies over metres, tufts over centimetres.
    noise = smooth_noise(shape, 4 * px_per_m, rng).astype(np.float64)
    dryness = stable(special.expit(1.5 * noise))
    image = GRASS_GREEN + dryness[..., None] * (GRASS_DRY - GRASS_GREEN)
    del dryness, noise
    # One fine-grained field serves grass tufts, bract shading and sage texture: at 2 px the
    # reuse is invisible and it saves a full-image blur per use.
    fine = smooth_noise(shape, 2.0, rng)
    luma = smooth_noise(shape, 0.4 * px_per_m, rng) * 0.035 + fine * 0.05
    # Bare soil in irregular openings.
    soil = np.clip((smooth_noise(shape, 2.5 * px_per_m, rng) - 1.0) * 2.0, 0, 1)
    _blend(image, soil * 0.85, SOIL)
    return image, fine, luma


def _quarter_mask(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 over 1 to 4 randomly chosen quarters of a patch centred on its plot, 0 elsewhere."""
    keep = np.zeros(4, dtype=bool)
    keep[rng.permutation(4)[: int(rng.integers(1, 5))]] = True
    half = patch.shape[0] // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    quarter = (yy >= 0).astype(int) * 2 + (xx >= 0).astype(int)
    return keep[quarter].astype(np.float32)


def _spurge(
    image: np.ndarray,
    fine: np.ndarray,
    centres: list[tuple[int, int]],
    plot_px: int,
    px_per_m: float,
    rng: np.random.Generator,
    partial_quarters: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint leafy spurge; its presence mask and which plots were given a patch.

    Patch intensity = envelope x density; clumps where fine noise falls below it. By
    default a surveyed infestation spreads over its plot, so every 2 x 2 quarter that
    `spurge tile` cuts from a "present" plot shows spurge and quarters can inherit the plot
    label. With ``partial_quarters`` it covers only 1 to 4 of them, as the seed survey's
    "four-crop and verify" step found in the field: quarters of a "present" plot then carry
    label noise. Patches between plots stay clear of the plots, so "absent" plots hold none.
    """
    shape = image.shape[:2]
    size_px = shape[0]
    intensity = np.zeros(shape, dtype=np.float32)
    plot_has_patch = rng.random(len(centres)) < 0.5
    for (row, col), has in zip(centres, plot_has_patch, strict=True):
        if has:
            gap = _gap_to_nearest_plot(row, col, centres, plot_px)
            patch = _plot_patch(plot_px, plot_px / 2 + min(0.15 * plot_px, gap / 2), rng)
            if partial_quarters:
                patch *= _quarter_mask(patch, rng)
            _paste(intensity, patch, row, col)
    n_extra = rng.poisson(size_px * size_px / (6 * plot_px) ** 2 * 1.5)
    for _ in range(n_extra):
        row, col = (int(v) for v in rng.integers(0, size_px, 2))
        radius = plot_px * rng.uniform(0.25, 0.9)
        clearance = radius * (1 + PATCH_ROUGHNESS) + plot_px * 0.75
        if all(np.hypot(row - r, col - c) > clearance for r, c in centres):
            envelope = _disc(radius, rng, roughness=PATCH_ROUGHNESS, falloff=0.6)
            _paste(intensity, envelope * np.float32(rng.uniform(0.12, 0.55)), row, col)
    noise = smooth_noise(shape, 0.09 * px_per_m, rng).astype(np.float64)
    clump_noise = stable(special.ndtr(noise))
    spurge = clump_noise < intensity
    leaves = np.clip((intensity - clump_noise + 0.08) * 6, 0, 1) * (intensity > 0)
    _blend(image, leaves.astype(np.float32) * 0.6, SPURGE_LEAF)
    del leaves, clump_noise, intensity
    bract_colour = SPURGE_BRACT * (1.0 + fine[..., None] * 0.08)
    _blend(image, spurge.astype(np.float32) * 0.8, bract_colour)
    return spurge, plot_has_patch


def _forbs(
    image: np.ndarray,
    centres: list[tuple[int, int]],
    plot_has_patch: np.ndarray,
    plot_px: int,
    px_per_m: float,
    rng: np.random.Generator,
) -> None:
    """Yellow lookalike forbs (balsamroot, sweetclover): clusters of small bright flowers,
    some beside plots without spurge so colour alone does not decide the class.
    """
    size_px = image.shape[0]
    forbs = np.zeros(image.shape[:2], dtype=np.float32)
    cluster_sites = [c for c, has in zip(centres, plot_has_patch, strict=True) if not has]
    cluster_sites = [c for c in cluster_sites if rng.random() < 0.6]
    for _ in range(3):
        row, col = (int(v) for v in rng.integers(0, size_px, 2))
        cluster_sites.append((row, col))
    for row, col in cluster_sites:
        spread = plot_px * rng.uniform(0.2, 0.5)
        for _ in range(int(rng.integers(10, 40))):
            fr, fc = rng.normal(0, spread, 2)
            flower = _disc(rng.uniform(0.04, 0.10) * px_per_m, rng, roughness=0.1)
            _paste(forbs, flower, row + int(fr), col + int(fc))
    _blend(image, forbs * 0.95, FORB_YELLOW)


def _sagebrush_and_light(
    image: np.ndarray, fine: np.ndarray, luma: np.ndarray, gsd_m: float, rng: np.random.Generator
) -> np.ndarray:
    """Sagebrush, shadows, cloud shading, tufts and sensor noise; scales ``image`` to 0..255
    in place and returns the crowns (spurge under a crown is hidden).
    """
    shape = image.shape[:2]
    px_per_m = 1.0 / gsd_m
    # Sagebrush with shadows cast to the north-west (morning sun from the south-east).
    n_shrubs = rng.poisson(shape[0] * shape[1] * gsd_m**2 * 0.06)
    shade = np.ones(shape, dtype=np.float32)
    crowns = np.zeros(shape, dtype=np.float32)
    for _ in range(n_shrubs):
        row, col = (int(v) for v in rng.integers(0, shape[0], 2))
        crown = _disc(rng.uniform(0.25, 0.7) * px_per_m, rng)
        offset = crown.shape[0] // 6
        _paste(shade, 1.0 - 0.45 * crown, row - offset, col - offset, op="mul")
        _paste(crowns, crown, row, col)
    _blend(image, crowns, SAGE * (1.0 + fine[..., None] * 0.12))
    # Shadows, cloud shading, tufts and sensor noise in one pass over the image; a crown is
    # lit from above, so its own shadow falls beside it, not on it.
    np.maximum(shade, crowns, out=shade)
    shade *= 1.0 + 0.08 * smooth_noise(shape, 15 * px_per_m, rng)
    shade *= np.float32(255.0)
    luma += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.012)
    image += luma[..., None]
    image *= shade[..., None]
    return crowns


def _write_tiff(path: Path, data: np.ndarray, transform: rasterio.Affine, rgb: bool) -> None:
    count = data.shape[0] if data.ndim == 3 else 1
    profile = {
        **TIFF_PROFILE,
        "width": data.shape[-1],
        "height": data.shape[-2],
        "count": count,
        "dtype": "uint8",
        "crs": SYNTH_CRS,
        "transform": transform,
    }
    if rgb:
        profile["photometric"] = "RGB"
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data if data.ndim == 3 else data[None])
        if rgb:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        else:
            dst.set_band_description(1, "leafy spurge presence (1) ground truth")


def site_transform(site: int, gsd_m: float) -> rasterio.Affine:
    return from_origin(ORIGIN_EASTING + site * SITE_SPACING_M, ORIGIN_NORTHING, gsd_m, gsd_m)


def synthesize(
    out_dir: str | Path,
    config: SpeciesConfig,
    sites: int = 3,
    size_px: int = 4000,
    seed: int = 0,
    partial_quarters: bool = False,
) -> SynthResult:
    """Write ``sites`` synthetic orthomosaics with plots and ground truth into ``out_dir``.

    ``partial_quarters``: infested plots hold spurge in only some of their quarters (a
    realistic, label-noisy set for `spurge tile`'s quarter tiles); see :func:`render_site`.
    """
    out_dir = ensure_writable_dir(out_dir)
    plot_px = config.plot_size_px
    if size_px < 4 * plot_px:
        raise SpurgeError(
            f"{size_px} px is too small for nine {config.plot_size_m} m plots "
            f"({plot_px} px each at {config.gsd_m} m/px): use at least {4 * plot_px}",
            param="size_px",
        )
    absent, present = _binary_classes(config)
    result = SynthResult(out_dir=out_dir)
    rows = []
    site_seeds = np.random.SeedSequence(seed).spawn(sites)
    for site in tqdm(range(sites), desc="synth sites", unit="site", leave=False):
        rng = np.random.default_rng(site_seeds[site])
        rgb, spurge, truth = render_site(size_px, plot_px, config.gsd_m, rng, partial_quarters)
        transform = site_transform(site, config.gsd_m)
        name = f"site_{site:03d}"
        ortho, truth_path = out_dir / f"{name}.tif", out_dir / f"{name}_truth.tif"
        _write_tiff(ortho, rgb, transform, rgb=True)
        _write_tiff(truth_path, spurge, transform, rgb=False)
        result.orthos.append(ortho)
        result.truths.append(truth_path)
        for k, ((row, col), cover) in enumerate(zip(truth.centres_px, truth.cover, strict=True)):
            x, y = transform @ (col, row)
            label = present if cover >= PRESENCE_MIN_COVER else absent
            rows.append(
                {
                    config.site_column or "site": name,
                    config.plot_id_column or "plot_id": f"{name}_p{k + 1}",
                    config.label_column: label,
                    "cover": round(cover, 5),
                    "geometry": Point(x, y),
                }
            )
            result.labels.append(label)
    plots = gpd.GeoDataFrame(rows, geometry="geometry", crs=SYNTH_CRS)
    result.plots = out_dir / "plots.gpkg"
    # GeoPackages stamp the write time into gpkg_contents; pin it so bytes depend on the seed only.
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2000-01-01T00:00:00.000Z"})
    try:
        with atomic_path(result.plots) as tmp:
            plots.to_file(tmp, driver="GPKG", layer="plots")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    result.manifest = write_dataset_manifest(
        out_dir / "dataset.yaml",
        name="spurge-synthetic",
        description=(
            f"Procedural orthomosaics from `spurge synth --sites {sites} --size-px {size_px} "
            f"--seed {seed}{' --partial-quarters' if partial_quarters else ''}` for "
            f"{config.species}"
        ),
        classes=config.class_names,
        source="generated by spurge.synthetic",
        licence="CC0-1.0",
        crs=SYNTH_CRS,
        gsd_m=config.gsd_m,
        files=[*result.orthos, *result.truths, result.plots],
    )
    return result


def _binary_classes(config: SpeciesConfig) -> tuple[str, str]:
    present = config.positive_class
    others = [name for name in config.class_names if name != present]
    return others[0], present
