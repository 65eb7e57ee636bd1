"""Reading orthomosaics: validation, band selection, 8-bit scaling and windowed reads.

Shared by ``spurge tile`` and ``spurge map`` so that a tile seen in training and a window
seen while mapping go through exactly the same pixels-to-RGB path. Nothing here reads a
whole orthomosaic into memory.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS, Proj, Transformer
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from spurge.errors import RasterError, squash

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2"}


@contextlib.contextmanager
def open_ortho(path: str | Path, *, require_crs: bool = True) -> Iterator[DatasetReader]:
    """Open an orthomosaic read-only, turning GDAL failures into one-line errors."""
    path = Path(path)
    if not path.exists():
        raise RasterError("file not found", path)
    try:
        with warnings.catch_warnings():
            # A missing geotransform is reported below as a one-line error instead.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterError(f"cannot read as a raster ({_gdal_reason(exc)})", path) from exc
    try:
        if require_crs:
            check_georeferenced(src, path)
        yield src
    except RasterioIOError as exc:
        # The header parsed but a pixel block did not: a truncated or corrupt file.
        raise RasterError(
            f"cannot read pixel data, truncated or corrupt? ({_gdal_reason(exc)})", path
        ) from exc
    finally:
        src.close()


def _gdal_reason(exc: BaseException) -> str:
    # rasterio's read error says only "Read failed. See previous exception for details.";
    # GDAL's own message (which block failed, and why) is the exception it chains.
    cause = exc.__cause__ or exc.__context__
    return squash(str(cause if cause is not None and str(cause) else exc), 160)


def check_georeferenced(src: DatasetReader, path: str | Path) -> None:
    """Refuse rasters without a CRS or a geotransform: their tiles cannot be placed on a map."""
    if src.crs is None and src.gcps[0]:
        raise RasterError("is georeferenced by GCPs: warp it first (gdalwarp)", path)
    if src.crs is None:
        raise RasterError("has no CRS (coordinate reference system); georeference it first", path)
    if src.transform.is_identity:
        raise RasterError("has no geotransform (pixel coordinates only)", path)
    if src.transform.b != 0 or src.transform.d != 0:
        raise RasterError("has a rotated geotransform; warp it north-up first (gdalwarp)", path)
    if src.crs.is_geographic:
        left, bottom, right, top = src.bounds
        xs, ys = sorted((left, right)), sorted((bottom, top))  # south-up grids flip them
        if xs[0] < -180.0 or xs[1] > 360.0 or ys[0] < -90.0 or ys[1] > 90.0:
            raise RasterError(
                f"bounds impossible for lon/lat ({left:.6g}, {bottom:.6g}, {right:.6g}, "
                f"{top:.6g}) under its CRS {src.crs.to_string()}: the numbers look projected, "
                "fix the CRS tag (gdal_edit.py -a_srs)",
                path,
            )


#: Projections whose scale at the raster centre is within this of 1 (UTM's 0.9996, state
#: planes, national grids) are taken at face value: a UTM ortho at 5 cm stays 5 cm. Beyond it
#: (Web Mercator, World Mercator away from the equator) grid units are not ground metres.
SCALE_TOLERANCE = 0.005


def _metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """Metres per degree of longitude and latitude (WGS84 ellipsoid approximation)."""
    lat = np.deg2rad(lat_deg)
    m_per_deg_lat = 111132.92 - 559.82 * np.cos(2 * lat) + 1.175 * np.cos(4 * lat)
    m_per_deg_lon = 111412.84 * np.cos(lat) - 93.5 * np.cos(3 * lat)
    return float(m_per_deg_lon), float(m_per_deg_lat)


def horizontal_crs(crs: Any) -> CRS:
    """The horizontal part of a CRS (the first sub-CRS of a compound one) as a pyproj CRS."""
    full = CRS.from_user_input(crs)
    if full.is_compound:
        return next((c for c in full.sub_crs_list if c.is_projected or c.is_geographic), full)
    return full


def projection_scale(crs: Any, x: float, y: float) -> tuple[float, float]:
    """Ground metres per grid metre (x, y) of a projected CRS at the point (x, y).

    From pyproj's ``get_factors`` at that point: the parallel scale along x and the
    meridional scale along y (equal for conformal projections). ``(1, 1)`` where the
    projection's scale is within :data:`SCALE_TOLERANCE` of 1 or cannot be computed.
    """
    projected = horizontal_crs(crs)
    try:
        to_lonlat = Transformer.from_crs(projected, projected.geodetic_crs, always_xy=True)
        lon, lat = to_lonlat.transform(x, y)
        factors = Proj(projected).get_factors(lon, lat)
    except Exception:  # a projection PROJ cannot differentiate: take its units at face value
        return 1.0, 1.0
    along_x, along_y = float(factors.parallel_scale), float(factors.meridional_scale)
    if not (np.isfinite(along_x) and np.isfinite(along_y)) or min(along_x, along_y) <= 0:
        return 1.0, 1.0
    if max(abs(along_x - 1), abs(along_y - 1)) <= SCALE_TOLERANCE:
        return 1.0, 1.0
    return 1.0 / along_x, 1.0 / along_y


def pixel_size_m(src: DatasetReader) -> tuple[float, float]:
    """Ground size of a pixel (x, y) in metres at the raster's centre.

    Geographic CRSs: metres per degree at the centre latitude. Projected CRSs: the CRS's
    linear unit times the projection's scale at the centre (:func:`projection_scale`), so an
    ortho warped to Web Mercator at 46.7 N is cut at its true ground size.
    """
    res_x, res_y = abs(src.transform.a), abs(src.transform.e)
    if src.crs is None:
        return float(res_x), float(res_y)
    crs = horizontal_crs(src.crs)
    centre_x = (src.bounds.left + src.bounds.right) / 2
    centre_y = (src.bounds.top + src.bounds.bottom) / 2
    if crs.is_geographic:
        per_lon, per_lat = _metres_per_degree(centre_y)
        return float(res_x * per_lon), float(res_y * per_lat)
    if not crs.is_projected:
        return float(res_x), float(res_y)
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    scale_x, scale_y = projection_scale(crs, centre_x, centre_y)
    return float(res_x * factor * scale_x), float(res_y * factor * scale_y)


def check_bands(
    src: DatasetReader, bands: Sequence[int], alpha_band: int | None, path: str | Path
) -> None:
    wanted = [*bands, *([alpha_band] if alpha_band else [])]
    missing = [b for b in wanted if b > src.count]
    if missing:
        raise RasterError(
            f"has {src.count} band(s) but the config asks for band(s) {missing}", path
        )


@dataclass(frozen=True)
class BandScaling:
    """Linear map of each selected band from [low, high] to [0, 255]; identity for uint8."""

    bands: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str

    @property
    def is_identity(self) -> bool:
        return self.dtype == "uint8"

    def to_dict(self) -> dict[str, Any]:
        return {
            "bands": list(self.bands),
            "low": list(self.low),
            "high": list(self.high),
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandScaling:
        return cls(
            bands=tuple(int(b) for b in data["bands"]),
            low=tuple(float(v) for v in data["low"]),
            high=tuple(float(v) for v in data["high"]),
            dtype=str(data["dtype"]),
        )

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Scale a (bands, H, W) array to uint8 (bands, H, W)."""
        if self.is_identity:
            return data.astype(np.uint8, copy=False)
        if data.dtype in (np.uint8, np.uint16) and data.shape[0] == len(self.low):
            # Every possible value through the same float32 formula once, then a lookup: the
            # same bytes without float copies of the image (several times its size).
            levels = np.arange(np.iinfo(data.dtype).max + 1, dtype=np.float32)
            table = self._scale(np.broadcast_to(levels, (data.shape[0], 1, levels.size)))
            out = np.empty(data.shape, np.uint8)
            for band in range(data.shape[0]):
                np.take(table[band, 0], data[band], out=out[band])
            return out
        return self._scale(data)

    def _scale(self, data: np.ndarray) -> np.ndarray:
        """The scaling formula in float32: (data - low) / (high - low) * 255, rounded."""
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        span = np.maximum(high - low, np.float32(1e-12))
        scaled = (data.astype(np.float32) - low) / span * np.float32(255.0)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def sample_windows(width: int, height: int, per_axis: int = 5, size: int = 256) -> list[Window]:
    """A deterministic grid of windows spread over the raster, for statistics."""
    windows = []
    w, h = min(size, width), min(size, height)
    for row in np.linspace(0, height - h, per_axis).round().astype(int):
        for col in np.linspace(0, width - w, per_axis).round().astype(int):
            windows.append(Window(int(col), int(row), w, h))
    return sorted(set(windows), key=lambda win: (win.row_off, win.col_off))


def compute_scaling(
    src: DatasetReader,
    bands: Sequence[int],
    percentiles: tuple[float, float] = (0.5, 99.5),
    alpha_band: int | None = None,
    path: str | Path | None = None,
) -> BandScaling:
    """Per-band percentiles of valid pixels from a sample of windows (not the whole raster)."""
    bands = tuple(int(b) for b in bands)
    dtype = src.dtypes[bands[0] - 1]
    if dtype == "uint8":
        return BandScaling(bands, (0.0,) * len(bands), (255.0,) * len(bands), "uint8")
    values: list[list[np.ndarray]] = [[] for _ in bands]
    for window in sample_windows(src.width, src.height):
        data = src.read(list(bands), window=window)
        valid = valid_mask(src, window, bands, alpha_band, data)
        for i in range(len(bands)):
            values[i].append(data[i][valid])
    low, high = [], []
    for i, band in enumerate(bands):
        pixels = np.concatenate(values[i]) if values[i] else np.empty(0)
        if pixels.size == 0:
            raise RasterError(f"band {band} has no valid pixels in the sampled windows", path)
        lo, hi = np.percentile(pixels.astype(np.float64), percentiles)
        if hi <= lo:
            hi = lo + 1.0
        low.append(float(lo))
        high.append(float(hi))
    return BandScaling(bands, tuple(low), tuple(high), str(dtype))


def _all_valid(src: Any, bands: Sequence[int]) -> bool:
    """Whether GDAL reports every pixel of these bands valid (no nodata, mask or alpha)."""
    return all(list(src.mask_flag_enums[b - 1]) == [MaskFlags.all_valid] for b in bands)


def valid_mask(
    src: DatasetReader,
    window: Window,
    bands: Sequence[int],
    alpha_band: int | None = None,
    data: np.ndarray | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """True where every selected band holds data (nodata, masks, alpha and NaN honoured)."""
    kwargs: dict[str, Any] = {"window": window}
    if out_shape is not None:
        kwargs.update(out_shape=(len(bands), *out_shape), resampling=Resampling.nearest)
    if data is not None and _all_valid(src, bands):
        # No nodata value, mask or alpha on these bands: reading the masks would only return
        # 255 everywhere, at the cost of a second read of the window.
        valid = np.ones(data.shape[1:], dtype=bool)
    else:
        valid = np.all(src.read_masks(list(bands), **kwargs) > 0, axis=0)
    if alpha_band:
        alpha_kwargs = dict(kwargs)
        if out_shape is not None:
            alpha_kwargs["out_shape"] = out_shape
        valid &= src.read(alpha_band, **alpha_kwargs) > 0
    if data is not None and np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def read_window_rgb8(
    src: DatasetReader,
    window: Window,
    scaling: BandScaling,
    alpha_band: int | None = None,
    out_size: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.bilinear,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window as 8-bit RGB (H, W, 3) plus a validity mask (H, W).

    ``out_size`` (height, width) resamples the window, e.g. to the configured tile size when
    the orthomosaic's GSD differs from the target GSD. Invalid pixels are set to 0.
    """
    bands = list(scaling.bands)
    kwargs: dict[str, Any] = {"window": window}
    if out_size is not None and out_size != (int(window.height), int(window.width)):
        kwargs.update(out_shape=(len(bands), *out_size), resampling=resampling)
    else:
        out_size = None
    data = src.read(bands, **kwargs)
    valid = valid_mask(src, window, bands, alpha_band, data, out_shape=out_size)
    rgb = scaling.apply(data)
    rgb[:, ~valid] = 0
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)), valid
