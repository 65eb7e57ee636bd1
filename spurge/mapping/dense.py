"""Dense inference: the classifier's backbone run fully convolutionally over ortho regions.

Contract:

- A classifier is backbone -> global average pool -> linear head. The head is linear, so the
  head applied to features averaged over a footprint equals the average over that footprint of
  the head applied at every feature location (the class-activation map, CAM). This module
  computes CAM logits once per region and pools them over any footprint: a model window
  (which approximates the window classifier) or an output cell (fine cells).
- Geometry: a region is resized by ``input_size / window_px`` exactly as windows are, so one
  backbone feature covers ``window_px / (input_size / stride)`` ortho px (36 px = 0.5 m for
  EfficientNet-Lite0 at 250 px windows of 1.4 cm). Regions start and end on multiples of the
  window size, so every region's features sit on one global lattice and the resize maps ortho
  pixels to the same input positions whatever region they are read in: cells mapped from two
  blocks agree with one block (seams) up to the backbone's receptive field, which the
  ``margin`` (in windows) covers.
- Memory is bounded by the region: nothing here holds more than one region's pixels, features
  and logits.
- Backbones that cannot run densely (``dinov2``: a ViT whose head reads the CLS token, which
  has no spatial position) raise :class:`DenseUnsupportedError`.

This module imports only numpy, torch, rasterio and spurge's light helpers (no geopandas,
pydantic): ``benchmarks/gpu_map_check.py`` loads it by file path on bare GPU machines.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from spurge.errors import SpurgeError
from spurge.io.raster import BandScaling, open_ortho, valid_mask
from spurge.mapping.grid import covered_cells, default_stride, window_starts

#: Backbones that cannot run densely, and why (the docs and the error say the same).
NOT_DENSE = {
    "dinov2": "its head reads the ViT's CLS token, which pools the whole 224 px input through "
    "attention and has no position on the ground; use --method windows",
}

#: GDAL block cache (MB) for the region readers: each region is read once.
GDAL_CACHE_MB = 64


class DenseUnsupportedError(SpurgeError):
    """The model's backbone cannot run fully convolutionally."""


class _ForwardFeatures(nn.Module):
    """A timm model's ``forward_features`` as a module (so it moves to a device/layout)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # timm's forward_features is not on nn.Module's type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def feature_extractor(name: str, backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x (N, 3, H, W) -> features (N, F, h, w)`` for a backbone whose output is the global
    average of such a map; :class:`DenseUnsupportedError` for any other.
    """
    if name in NOT_DENSE:
        raise DenseUnsupportedError(f"backbone {name!r} cannot map densely: {NOT_DENSE[name]}")
    if hasattr(backbone, "forward_features") and getattr(backbone, "global_pool", None):
        pool = backbone.global_pool
        kind = getattr(pool, "pool_type", "avg")
        if kind == "avg":  # timm CNNs: forward_features then global average pool
            return _ForwardFeatures(backbone)
    if isinstance(backbone, nn.Sequential) and len(backbone) > 2:
        *body, pool, flat = list(backbone)
        if isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(flat, nn.Flatten):
            return nn.Sequential(*body)
    children = dict(backbone.named_children())
    if isinstance(children.get("avgpool"), nn.AdaptiveAvgPool2d) and "layer4" in children:
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return nn.Sequential(*(children[n] for n in names))  # torchvision ResNets
    raise DenseUnsupportedError(
        f"backbone {name!r} cannot map densely: its features are not a global average of a "
        "convolutional feature map; use --method windows"
    )


@dataclass(frozen=True)
class DenseGeometry:
    """Sizes, in ortho px unless named otherwise, that tie the ortho to the feature lattice."""

    window_x: int
    window_y: int
    input_size: int  # network input px per window side
    stride: int  # backbone output stride, network input px
    cell_x: int
    cell_y: int
    margin: int = 1  # windows of context read around each block

    @property
    def features_per_window(self) -> int:
        return self.input_size // self.stride

    @property
    def step_x(self) -> float:
        """Ortho px per feature along x."""
        return self.window_x / self.features_per_window

    @property
    def step_y(self) -> float:
        return self.window_y / self.features_per_window


@torch.no_grad()
def probe_stride(features: Callable[[torch.Tensor], torch.Tensor], input_size: int) -> int:
    """The backbone's output stride in input px, from one forward of a blank window."""
    weight = next(iter(getattr(features, "parameters", lambda: iter(()))()), None)
    device = weight.device if weight is not None else torch.device("cpu")
    out = features(torch.zeros(1, 3, input_size, input_size, device=device))
    return input_size // out.shape[-1]


def finest_cell_px(window_px: int, input_size: int, stride: int) -> int:
    """The smallest whole number of ortho px that is at least one feature step."""
    return math.ceil(window_px * stride / input_size - 1e-9)


def cell_px_for(cell_m: float, pixel_m: float, finest_px: int, axis: str) -> int:
    """Ortho px per cell for ``--cell-size``; a one-line error when it is not usable."""
    px = cell_m / pixel_m
    if not math.isfinite(px) or px <= 0 or abs(px - round(px)) > 1e-6 * max(1.0, px):
        raise SpurgeError(
            f"--cell-size {cell_m:g} m is not a whole number of ortho pixels along {axis} "
            f"({pixel_m:.6g} m each: {px:.4g} px); use a multiple of {pixel_m:.6g} m"
        )
    if round(px) < finest_px:
        raise SpurgeError(
            f"--cell-size {cell_m:g} m ({round(px)} px) is finer than the backbone's feature "
            f"step ({finest_px} px = {finest_px * pixel_m:.4g} m along {axis}); the dense "
            "map has nothing finer to give"
        )
    return round(px)


def region_bounds(lo: int, hi: int, window: int, margin: int, size: int) -> tuple[int, int]:
    """Half-open ortho range read for cells spanning ``[lo, hi)``: ``margin`` windows of
    context, snapped outwards to the window lattice and clamped to the lattice cells that hold
    the ortho (``size`` px): no block reads context beyond the ortho's edge, so a cell on the
    edge sees the same input (and the same zero padding there) whatever block maps it.
    """
    start = max(0, (lo // window - margin) * window)
    stop = min(-(-size // window) * window, (-(-hi // window) + margin) * window)
    return start, stop


def _read_strip(
    path: str, scaling: BandScaling, alpha_band: int | None, window: Window
) -> tuple[np.ndarray, np.ndarray]:
    # open_ortho: a truncated or corrupt block is a one-line RasterError naming the file.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_ortho(path, require_crs=False) as src:
        bands = list(scaling.bands)
        data = src.read(bands, window=window)
        valid = valid_mask(src, window, bands, alpha_band, data)
    rgb = scaling.apply(data)
    rgb[:, ~valid] = 0  # nodata is black, as in the window path
    return rgb, valid


def read_region(
    path: str,
    size: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
    scaling: BandScaling,
    alpha_band: int | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """8-bit RGB (H, W, 3) and validity (H, W) of ortho rows/cols (may reach outside).

    The part inside the ortho (width, height = ``size``) is decoded in ``threads`` horizontal
    strips at once (GDAL releases the GIL); outside is 0 and invalid. Also returns the inside
    box ``(y0, y1, x0, x1)`` relative to the region.
    """
    width, height = size
    y0, y1 = max(rows[0], 0), min(rows[1], height)
    x0, x1 = max(cols[0], 0), min(cols[1], width)
    h, w = rows[1] - rows[0], cols[1] - cols[0]
    rgb = np.zeros((h, w, 3), np.uint8)
    valid = np.zeros((h, w), bool)
    inside = (y0 - rows[0], y1 - rows[0], x0 - cols[0], x1 - cols[0])
    if y1 <= y0 or x1 <= x0:
        return rgb, valid, inside
    n = max(1, min(threads, (y1 - y0) // 64))
    edges = np.linspace(y0, y1, n + 1).round().astype(int)
    windows = [Window(x0, a, x1 - x0, b - a) for a, b in itertools.pairwise(edges)]

    def one(window: Window) -> None:
        strip, ok = _read_strip(path, scaling, alpha_band, window)
        r = int(window.row_off) - rows[0]
        rgb[r : r + ok.shape[0], inside[2] : inside[3]] = strip.transpose(1, 2, 0)
        valid[r : r + ok.shape[0], inside[2] : inside[3]] = ok

    if n == 1:
        one(windows[0])
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(one, windows))
    return rgb, valid, inside


class TileTransformLike(Protocol):
    """What :class:`spurge.transform.TileTransform` offers (not imported: see the contract)."""

    def resize(self, images: torch.Tensor) -> torch.Tensor: ...

    def normalise(self, batch: torch.Tensor) -> torch.Tensor: ...


class CamCache:
    """CAM logits of windows already computed for one orthomosaic, by ortho offset (y, x).

    A window's CAM depends only on its pixels (every forward has exactly ``batch_tiles``
    windows, so batching cannot change a result), so a window shared by two blocks (their
    margins) is computed once. Least recently used entries go first; the capacity holds a few
    block rows of a 70 000 px wide ortho (about 0.5 kB an entry).
    """

    def __init__(self, capacity: int = 32768) -> None:
        self.capacity = capacity
        self.items: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.computed = 0

    def get(self, key: tuple[int, int]) -> torch.Tensor | None:
        """The entry, marked as recently used; None when absent."""
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key: tuple[int, int], cam: torch.Tensor) -> None:
        """Store one window's CAM, dropping the least recently used beyond the capacity."""
        self.items[key] = cam
        self.computed += 1
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)


class DenseModel:
    """Backbone features + linear head -> CAM logits for a region, on any device."""

    def __init__(
        self,
        features: Callable[[torch.Tensor], torch.Tensor],
        head: nn.Linear,
        transform: TileTransformLike,
        geometry: DenseGeometry,
        device: torch.device,
        tiled: bool = True,
        batch_tiles: int = 64,
    ) -> None:
        self.features = features
        self.tiled, self.batch_tiles = tiled, batch_tiles
        self.geometry = geometry
        self.device = device
        self.transform = transform
        self.cache = CamCache()
        self.forwards = 0  # backbone forwards of the tiled pass, for benchmarks
        if isinstance(features, nn.Module):
            # Channels-last weights match the channels-last input: the fast conv path.
            features.to(device).to(memory_format=torch.channels_last).eval()
        self.weight = head.weight.detach().float().to(device)
        self.bias = head.bias.detach().float().to(device)
        self.half = device.type == "cuda"

    def prepare(self, rgb: np.ndarray, inside: tuple[int, int, int, int]) -> torch.Tensor:
        """uint8 (H, W, 3) -> normalised, resized, channels-last float (1, 3, h, w): the
        context pass (the whole region as one image, resized without 8-bit rounding).
        """
        g = self.geometry
        batch = torch.from_numpy(rgb)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # page-locked: the copy below runs asynchronously
        # NCHW for the resize (its antialiased kernel is ~3x slower on a channels-last view).
        batch = batch.to(self.device, non_blocking=True).permute(2, 0, 1)[None].float().contiguous()
        h, w = rgb.shape[:2]
        out = (h * g.input_size // g.window_y, w * g.input_size // g.window_x)
        batch = nn.functional.interpolate(
            batch, size=out, mode="bilinear", align_corners=False, antialias=True
        )
        batch = self.transform.normalise(batch)
        # Outside the ortho the input is 0 after normalisation: what a window's conv padding
        # sees beyond its edge.
        sy, sx = g.input_size / g.window_y, g.input_size / g.window_x
        y0, y1 = round(inside[0] * sy), round(inside[1] * sy)
        x0, x1 = round(inside[2] * sx), round(inside[3] * sx)
        if (y0, y1, x0, x1) != (0, out[0], 0, out[1]):
            keep = torch.zeros(out, dtype=torch.bool, device=self.device)
            keep[y0:y1, x0:x1] = True
            batch = batch * keep
        return batch.contiguous(memory_format=torch.channels_last)

    def prepare_windows(
        self, rgb: np.ndarray, inside: tuple[int, int, int, int], offsets: np.ndarray
    ) -> torch.Tensor:
        """Windows at region offsets ``(n, 2)`` (y, x) as a channels-last batch (n, 3, S, S),
        each through the model card's :class:`~spurge.transform.TileTransform` exactly as a
        training tile and a windows-mode window (resize, 8-bit rounding, normalisation).
        """
        g = self.geometry
        tiles = np.stack([rgb[y : y + g.window_y, x : x + g.window_x] for y, x in offsets])
        batch = torch.from_numpy(tiles)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # page-locked: the copy below runs asynchronously
        batch = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        batch = self.transform.normalise(self.transform.resize(batch.contiguous()))
        rows = _keep(offsets[:, 0], g.window_y, g.input_size, inside[0], inside[1], self.device)
        cols = _keep(offsets[:, 1], g.window_x, g.input_size, inside[2], inside[3], self.device)
        if not (rows.all() and cols.all()):
            # Outside the ortho the input is 0 after normalisation (conv padding's value).
            batch = batch * (rows[:, :, None] & cols[:, None, :])[:, None]
        return batch.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def window_cams(
        self,
        rgb: np.ndarray,
        inside: tuple[int, int, int, int],
        origin: tuple[int, int],
        offsets: np.ndarray,
    ) -> torch.Tensor:
        """CAM logits (n, C, k, k), float32 on the CPU, of windows at region ``offsets``
        (n, 2), each classified alone; ``origin`` is the region's ortho px (y, x), the
        key of :attr:`cache`. Every forward holds exactly ``batch_tiles`` windows (zeros
        pad the last), so a window's result never depends on what it was batched with.
        """
        keys = [(origin[0] + int(y), origin[1] + int(x)) for y, x in offsets]
        found: dict[tuple[int, int], torch.Tensor] = {}
        for key in keys:
            if (hit := self.cache.get(key)) is not None:
                found[key] = hit
        todo = np.array(
            [offset for key, offset in zip(keys, offsets, strict=True) if key not in found]
        ).reshape(-1, 2)
        todo = np.unique(todo, axis=0)  # a window asked for twice is computed once
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()
        for first in range(0, len(todo), self.batch_tiles):
            chunk = todo[first : first + self.batch_tiles]
            batch = self.prepare_windows(rgb, inside, chunk)
            if len(chunk) < self.batch_tiles:
                pad = batch.new_zeros((self.batch_tiles - len(chunk), *batch.shape[1:]))
                batch = torch.cat([batch, pad]).contiguous(memory_format=torch.channels_last)
            with autocast:
                feats = self.features(batch)[: len(chunk)].float()
            self.forwards += 1
            cam = torch.einsum("cf,nfhw->nchw", self.weight, feats) + self.bias[:, None, None]
            for (y, x), one in zip(chunk, cam.cpu(), strict=True):
                key = (origin[0] + int(y), origin[1] + int(x))
                found[key] = one.clone()  # not a view: the batch's storage can go
                self.cache.put(key, found[key])
        return torch.stack([found[key] for key in keys])

    @torch.no_grad()
    def logits(
        self, rgb: np.ndarray, inside: tuple[int, int, int, int], origin: tuple[int, int]
    ) -> torch.Tensor:
        """CAM logits (C, h, w), float32 on the CPU, one per feature of the region.

        Tiled (the default): the region's windows on the lattice go through the backbone
        each alone (:meth:`window_cams`), exactly like the training tiles and the window path
        (zero padding at each window's edge), so the features the head sees are the ones it
        was trained on. Otherwise the region goes through as one image (features with real
        context across window edges; needs margins).
        """
        if not self.tiled:
            autocast = torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()
            with autocast:
                feats = self.features(self.prepare(rgb, inside))[0].float()
            cam = torch.einsum("cf,fhw->chw", self.weight, feats) + self.bias[:, None, None]
            return cam.cpu()
        g = self.geometry
        nh, nw = rgb.shape[0] // g.window_y, rgb.shape[1] // g.window_x
        grid = np.stack(np.meshgrid(np.arange(nh), np.arange(nw), indexing="ij"), -1)
        offsets = (grid.reshape(-1, 2) * (g.window_y, g.window_x)).astype(np.int64)
        cam = self.window_cams(rgb, inside, origin, offsets)
        _n, c, k, _ = cam.shape
        return cam.reshape(nh, nw, c, k, k).permute(2, 0, 3, 1, 4).reshape(c, nh * k, nw * k)


def _keep(
    starts: np.ndarray, window: int, size: int, lo: int, hi: int, device: torch.device
) -> torch.Tensor:
    """(n, size) bools: which input px of windows starting at region px ``starts`` along one
    axis lie in the region px range ``[lo, hi)`` (the ortho).
    """
    px = torch.arange(size, device=device, dtype=torch.float64)
    first = torch.as_tensor(np.asarray(starts), device=device, dtype=torch.float64)
    centre = first[:, None] + (px[None] + 0.5) * window / size  # region px under each input px
    return (centre >= lo) & (centre < hi)


def footprint_weights(
    starts: np.ndarray, stops: np.ndarray, origin: int, step: float, n: int
) -> np.ndarray:
    """(len(starts), n) weights: the share of each footprint ``[start, stop)`` (ortho px)
    that feature ``j`` (covering ``[origin + j*step, origin + (j+1)*step)``) covers.
    """
    edges = origin + np.arange(n + 1) * step
    lo = np.maximum(starts[:, None], edges[None, :-1])
    hi = np.minimum(stops[:, None], edges[None, 1:])
    overlap = np.clip(hi - lo, 0, None)
    return overlap / (stops - starts)[:, None]


def pool_logits(cam: torch.Tensor, rows_w: np.ndarray, cols_w: np.ndarray) -> np.ndarray:
    """Average CAM logits over footprints: (C, h, w) -> (C, len(rows), len(cols))."""
    rw = torch.from_numpy(rows_w).float()
    cw = torch.from_numpy(cols_w).float()
    return torch.einsum("rh,chw,kw->crk", rw, cam, cw).double().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, in float64."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=0, keepdims=True)


def cell_valid_share(valid: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray) -> np.ndarray:
    """Share of valid pixels in each cell, cell edges given in region px (clipped inside)."""
    inner = valid[row_edges[0] : row_edges[-1], col_edges[0] : col_edges[-1]]
    if inner.all():  # the usual case, without a cumulative sum over the whole region
        return np.ones((len(row_edges) - 1, len(col_edges) - 1))
    integral = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), np.int64)
    integral[1:, 1:] = valid.cumsum(0).cumsum(1)
    r, c = row_edges, col_edges
    sums = (
        integral[np.ix_(r[1:], c[1:])]
        - integral[np.ix_(r[:-1], c[1:])]
        - integral[np.ix_(r[1:], c[:-1])]
        + integral[np.ix_(r[:-1], c[:-1])]
    )
    area = np.outer(np.diff(r), np.diff(c))
    return np.divide(sums, area, out=np.zeros(sums.shape), where=area > 0)


def cell_edges(first: int, stop: int, cell: int, size: int, origin: int) -> np.ndarray:
    """Edges, in region px, of cells ``first..stop`` (``cell`` ortho px each, the last one
    clipped to the ortho's ``size``) for a region starting at ortho px ``origin``.
    """
    return np.minimum(np.arange(first, stop + 1) * cell, size) - origin


@dataclass(frozen=True)
class Refinement:
    """Which windows-mode windows the dense pass classifies alone instead of pooling.

    A window on the lattice is exact (it is one of the tiles). A window half a window off it
    is approximated by pooling the features of the four tiles under it, which saw zero
    padding where the window sees pixels (mean abs(dp) 0.07, up to 0.26 on the benchmark).
    Where that can change a decision the window is classified alone: when its pooled
    probability, or the windows-mode blend of any cell whose centre it covers (the cells
    of ``cell_y`` x ``cell_x`` px windows mode maps), lies within ``band`` of ``threshold``.
    """

    threshold: float
    positive: int
    cell_y: int
    cell_x: int
    band: float = 0.05


@dataclass(frozen=True)
class WindowGate:
    """The windows that cap fine cells: windows-mode window starts (region px) in a region,
    the positive class, the refinement rule (None: pooled only) and the ortho's (height,
    width).
    """

    row_starts: np.ndarray
    col_starts: np.ndarray
    positive: int
    refine: Refinement | None
    full: tuple[int, int]


@dataclass
class WindowProbabilities:
    """Class probabilities (C, rows, cols) of the windows at ``row_starts`` x ``col_starts``
    (region px) and how many were classified alone to refine them.
    """

    probs: np.ndarray
    row_starts: np.ndarray
    col_starts: np.ndarray
    refined: int = 0


def _blend_cover(
    starts: np.ndarray, window: int, cell: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: (windows, cells) bools, the windows-mode cells (``cell`` px from
    ortho px 0) whose centre each window (at ortho px ``starts``) covers, over the cells
    any of them covers; and, per such cell, whether ``starts`` hold every window that
    covers it in an ortho of ``size`` px (only then is its blend the windows-mode blend).
    """
    spans = np.array([covered_cells(int(s), window, cell) for s in starts]).reshape(-1, 2)
    first, stop = spans[:, 0].min(), spans[:, 1].max()
    index = np.arange(first, stop)
    cover = (index[None] >= spans[:, :1]) & (index[None] < spans[:, 1:])
    every = window_starts(size, window, default_stride(window))
    all_spans = np.array([covered_cells(s, window, cell) for s in every]).reshape(-1, 2)
    total = ((index[None] >= all_spans[:, :1]) & (index[None] < all_spans[:, 1:])).sum(0)
    return cover, cover.sum(0) == total


def _near_decision(
    p: np.ndarray, starts: tuple[np.ndarray, np.ndarray], full: tuple[int, int],
    g: DenseGeometry, refine: Refinement,
) -> np.ndarray:  # fmt: skip
    """(rows, cols) bools: windows (positive probability ``p``, ortho px ``starts``) whose
    probability, or the windows-mode blend of a cell whose centre they cover, is near the
    threshold. ``full`` is the ortho's (height, width).
    """
    rows, rows_whole = _blend_cover(starts[0], g.window_y, refine.cell_y, full[0])
    cols, cols_whole = _blend_cover(starts[1], g.window_x, refine.cell_x, full[1])
    rf, cf = rows.astype(float), cols.astype(float)
    blend = (rf.T @ p @ cf) / np.outer(rows.sum(0), cols.sum(0))  # windows-mode "mean" blend
    near_cell = (np.abs(blend - refine.threshold) < refine.band) & np.outer(rows_whole, cols_whole)
    near = np.abs(p - refine.threshold) < refine.band
    return near | ((rf @ near_cell @ cf.T) > 0)


def window_probabilities(
    dense: DenseModel,
    rgb: np.ndarray,
    inside: tuple[int, int, int, int],
    origin: tuple[int, int],
    cam: torch.Tensor,
    starts: tuple[np.ndarray, np.ndarray],
    full: tuple[int, int],
    needed: np.ndarray | None = None,
    refine: Refinement | None = None,
) -> WindowProbabilities:
    """Probabilities of windows-mode windows at region ``starts`` (rows, cols): the head on
    the lattice features pooled over each footprint, and, with ``refine``, the ``needed``
    windows (all by default) near the decision classified alone (see :class:`Refinement`).
    ``origin`` is the region's ortho px (y, x) and ``full`` the ortho's (height, width).
    """
    g = dense.geometry
    rows, cols = starts
    rw = footprint_weights(rows, rows + g.window_y, 0, g.step_y, cam.shape[1])
    cw = footprint_weights(cols, cols + g.window_x, 0, g.step_x, cam.shape[2])
    result = WindowProbabilities(softmax(pool_logits(cam, rw, cw)), rows, cols)
    if refine is None or not len(rows) or not len(cols):
        return result
    # The region starts on the lattice: windows at multiples of the window are tiles.
    pooled = ~((rows % g.window_y == 0)[:, None] & (cols % g.window_x == 0)[None])
    if needed is not None:
        pooled &= needed
    ortho_starts = (rows + origin[0], cols + origin[1])
    todo = pooled & _near_decision(result.probs[refine.positive], ortho_starts, full, g, refine)
    i, j = np.nonzero(todo)
    if len(i):
        cams = dense.window_cams(rgb, inside, origin, np.stack([rows[i], cols[j]], 1))
        result.probs[:, i, j] = softmax(cams.mean(dim=(2, 3)).double().numpy().T)
        result.refined = len(i)
    return result


def cell_probabilities(
    dense: DenseModel,
    rgb: np.ndarray,
    inside: tuple[int, int, int, int],
    origin: tuple[int, int],
    row_edges: np.ndarray,
    col_edges: np.ndarray,
    gate: WindowGate | None = None,
) -> tuple[np.ndarray, int]:
    """Class probabilities (C, cells down, cells across): the head applied to the backbone
    features averaged over each cell (= the CAM logits averaged over it), softmaxed; and the
    number of windows refined.

    With ``gate``, each cell's positive probability is capped by the highest probability
    among the windows covering the cell's centre (see :func:`gate_by_windows`).
    """
    g = dense.geometry
    cam = dense.logits(rgb, inside, origin)
    rows_w = footprint_weights(row_edges[:-1], row_edges[1:], 0, g.step_y, cam.shape[1])
    cols_w = footprint_weights(col_edges[:-1], col_edges[1:], 0, g.step_x, cam.shape[2])
    probs = softmax(pool_logits(cam, rows_w, cols_w))
    if gate is None:
        return probs, 0
    cover_r = _covers(row_edges, gate.row_starts, g.window_y)
    cover_c = _covers(col_edges, gate.col_starts, g.window_x)
    needed = np.outer(cover_r.any(0), cover_c.any(0))
    starts = (gate.row_starts, gate.col_starts)
    windows = window_probabilities(
        dense, rgb, inside, origin, cam, starts, gate.full, needed, gate.refine
    )
    p_windows = windows.probs[gate.positive]
    return gate_by_windows(probs, p_windows, cover_r, cover_c, gate.positive), windows.refined


def _covers(edges: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """(cells, windows) bools: which windows (region px ``starts``) hold each cell's centre
    (cells between region px ``edges``).
    """
    centre = (edges[:-1] + edges[1:]) / 2
    return (centre[:, None] >= starts[None]) & (centre[:, None] < starts[None] + window)


def gate_by_windows(
    probs: np.ndarray,
    p_windows: np.ndarray,
    cover_r: np.ndarray,
    cover_c: np.ndarray,
    positive: int,
) -> np.ndarray:
    """Cap each cell's positive probability by max P(window) over the windows covering its
    centre (``p_windows`` (window rows, window cols); ``cover_r`` (cell rows, window rows)
    and ``cover_c`` (cell cols, window cols) say which cover which).

    Why: the head was trained on whole windows (a window is positive when spurge is anywhere
    in it). A single feature's CAM logit spreads into neighbouring cells; a cell is presence
    only when its own CAM says so *and* some window around it does. Other classes share the
    rest of the probability in their previous proportions.
    """
    across = np.where(cover_c[None], p_windows[:, None, :], 0.0).max(axis=2)  # (win rows, cells)
    gate = np.where(cover_r[:, :, None], across[None], 0.0).max(axis=1)  # (cells, cells)
    old = probs[positive]
    new = np.minimum(old, gate)
    rest = np.divide(1.0 - new, 1.0 - old, out=np.ones_like(old), where=old < 1.0)
    out = probs * rest[None]
    out[positive] = new
    return out


def device_summary(device: torch.device) -> dict[str, Any]:
    """What ran the model, for records and benchmark lines."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": str(device), "name": name, "fp16": device.type == "cuda"}
