"""Tests for dense mapping (``spurge map --method dense``, issue 12).

Models: ``test-colour-conv`` (the colour rule of the map tests as a per-pixel feature map, so
dense pooling must reproduce each window's score when its footprints are right) and
``random-small`` (a random CNN whose features depend on context, for seams and layouts).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from spurge.classifier import ModelCard, build_classifier, load_model, save_model
from spurge.io.raster import compute_scaling, read_window_rgb8
from spurge.mapping import map_orthos
from spurge.mapping import predict as map_predict
from spurge.mapping.dense import (
    DenseUnsupportedError,
    cell_px_for,
    feature_extractor,
    footprint_weights,
    region_bounds,
)
from spurge.mapping.grid import MapGrid
from spurge.synthetic import synthesize
from tests.builders import GSD, TILE_PX, make_colour_model, make_dense_colour_model, tiny_config

SIZE_PX = 320


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthesize(
        tmp_path_factory.mktemp("synth"), tiny_config(), sites=1, size_px=SIZE_PX, seed=3
    )


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    return make_dense_colour_model(tmp_path_factory.mktemp("colour"))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("random")
    torch.manual_seed(0)
    model, spec = build_classifier("random-small", 2, pretrained=False)
    with torch.no_grad():  # a head that spreads probabilities over the whole range
        model.head.weight.mul_(40.0)
    save_model(model, ModelCard.for_classifier("random-small", spec, tiny_config()), run_dir)
    return run_dir


def _read(path: Path) -> tuple[np.ndarray, rasterio.Affine, tuple[int, int]]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform, (src.width, src.height)


def _prob(out: Path, ortho: Path) -> np.ndarray:
    return _read(out / f"{ortho.stem}_prob.tif")[0]


def _window_settings(ortho: Path, run_dir: Path) -> tuple[MapGrid, map_predict.DenseSettings]:
    _, card = load_model(run_dir)
    config = card.species_config()
    with rasterio.open(ortho) as src:
        scaling = compute_scaling(src, config.bands, config.scale_percentiles)
        grid = MapGrid(
            src.width,
            src.height,
            TILE_PX,
            TILE_PX,
            TILE_PX // 2,
            TILE_PX // 2,
            tuple(src.transform)[:6],
        )
    settings = map_predict.DenseSettings(
        str(ortho), str(run_dir), card.weights_sha256, scaling.to_dict(), None, 0.25
    )
    return grid, settings


def test_dense_window_pooling_reproduces_windows(synth, colour_run, tmp_path):
    """With a context-free model, features pooled over each window footprint give the
    window's own probability: only the resize at window edges differs.
    """
    ortho = synth.orthos[0]
    windows = map_orthos([ortho], colour_run, tmp_path / "w", method="windows", progress=False)
    grid, settings = _window_settings(ortho, colour_run)
    assert windows.maps[0].grid.stride_x == grid.stride_x
    cells = map_predict.blend_window_probabilities(
        grid, map_predict.dense_window_probabilities(grid, settings).probs
    )[1]
    expected = _prob(tmp_path / "w", ortho).astype(float) / 100
    assert cells.shape == expected.shape
    dense_pct = np.rint(cells * 100) / 100
    assert np.abs(dense_pct - expected).mean() < 0.01
    assert ((dense_pct >= 0.5) == (expected >= 0.5)).mean() >= 0.97
    assert (expected >= 0.5).sum() >= 5  # the ortho holds spurge the rule finds


@pytest.fixture
def fresh_dense_models():
    """No dense model (nor its window CAM cache) carried over from an earlier map."""
    map_predict._DENSE.clear()
    yield
    map_predict._DENSE.clear()


@pytest.fixture(scope="module")
def spread_run(synth, tmp_path_factory):
    """``random-small`` with a head scaled and centred so that its window probabilities on
    the test ortho spread around 0.5 (logit differences: median 0, std 2).
    """
    run_dir = tmp_path_factory.mktemp("spread")
    torch.manual_seed(1)
    model, spec = build_classifier("random-small", 2, pretrained=False)
    card = ModelCard.for_classifier("random-small", spec, tiny_config())
    with rasterio.open(synth.orthos[0]) as src:
        config = card.species_config()
        scaling = compute_scaling(src, config.bands, config.scale_percentiles)
        images = np.stack(
            [read_window_rgb8(src, Window(x, y, TILE_PX, TILE_PX), scaling)[0]
             for y in range(0, SIZE_PX - TILE_PX + 1, 16)
             for x in range(0, SIZE_PX - TILE_PX + 1, 16)]
        )  # fmt: skip
    model.eval()
    with torch.no_grad():
        features = model.backbone(card.transform(images))
        d = features @ (model.head.weight[1] - model.head.weight[0])
        k = 2.0 / float(d.std())
        model.head.weight.mul_(k)
        model.head.bias.copy_(torch.tensor([0.0, -k * float(d.median())]))
    save_model(model, card, run_dir)
    return run_dir


def _windows_mode_probabilities(ortho: Path, run_dir: Path, grid: MapGrid) -> np.ndarray:
    """P(present) of every window of ``grid`` classified alone, as windows mode does."""
    model, card = load_model(run_dir)
    config = card.species_config()
    with rasterio.open(ortho) as src:
        scaling = compute_scaling(src, config.bands, config.scale_percentiles)
        images = [
            [
                read_window_rgb8(src, Window(x, y, TILE_PX, TILE_PX), scaling)[0]
                for x in grid.col_starts
            ]
            for y in grid.row_starts
        ]
    probs = [map_predict.predict_windows(model, card, np.stack(row))[:, 1] for row in images]
    return np.array(probs)


def test_lattice_and_refined_windows_are_the_window_classifier(
    synth, spread_run, fresh_dense_models
):
    """Windows on the lattice (tiles) give exactly the window classifier's probability (the
    same resize, 8-bit rounding and normalisation: the tiles are upsampled 32 -> 64 px here),
    and so does every window the refinement classifies alone.
    """
    ortho = synth.orthos[0]
    grid, settings = _window_settings(ortho, spread_run)
    expected = _windows_mode_probabilities(ortho, spread_run, grid)
    assert expected.std() > 0.1  # the model says different things in different places

    pooled = map_predict.dense_window_probabilities(grid, replace(settings, refine_band=0.0)).probs[
        1
    ]
    lattice = (np.array(grid.row_starts) % TILE_PX == 0)[:, None] & (
        np.array(grid.col_starts) % TILE_PX == 0
    )[None]
    assert lattice.sum() >= 16
    np.testing.assert_allclose(pooled[lattice], expected[lattice], atol=1e-5)
    assert np.abs(pooled[~lattice] - expected[~lattice]).max() > 0.02  # approximated

    every = map_predict.dense_window_probabilities(grid, replace(settings, refine_band=1.0))
    assert every.refined == (~lattice).sum()
    np.testing.assert_allclose(every.probs[1], expected, atol=1e-5)

    default = map_predict.dense_window_probabilities(grid, settings)
    assert 0 < default.refined < (~lattice).sum()
    refined = np.abs(default.probs[1] - pooled) > 0
    np.testing.assert_allclose(default.probs[1][refined], expected[refined], atol=1e-5)
    # What was left pooled is far enough from the threshold for its own decision to hold.
    left = ~refined & ~lattice
    assert (np.abs(pooled[left] - 0.5) >= settings.refine_band).all()


def test_window_cams_do_not_depend_on_batching(synth, random_run, fresh_dense_models):
    """Every forward holds batch_tiles windows, so a window's CAM is the same bytes whatever
    it is computed with: what makes the per-ortho cache and block seams exact.
    """
    grid, settings = _window_settings(synth.orthos[0], random_run)
    dense, _ = map_predict.cached_dense_model(grid, replace(settings, batch_tiles=4))
    region = map_predict.read_dense_block(
        grid, map_predict.Block(0, (0, grid.rows), (0, grid.cols)), settings
    )
    offsets = np.array([[0, 0], [16, 48], [32, 0], [64, 96], [96, 32], [8, 8]])
    together = dense.window_cams(region.rgb, region.inside, (0, 0), offsets)
    for i in range(len(offsets)):
        dense.cache.items.clear()
        alone = dense.window_cams(region.rgb, region.inside, (0, 0), offsets[i : i + 1])
        assert torch.equal(alone[0], together[i])
    assert dense.cache.computed == len(offsets) * 2
    again = dense.window_cams(region.rgb, region.inside, (0, 0), offsets[::-1])
    assert dense.cache.computed == len(offsets) * 2 + len(offsets) - 1  # the rest were cached
    assert torch.equal(again, together.flip(0))


def test_default_method_is_dense_where_the_backbone_can(synth, random_run, tmp_path):
    """No --method: dense for a CNN; windows with --stride; windows, said in the summary,
    for a backbone that cannot run densely.
    """
    ortho = synth.orthos[0]
    dense = map_orthos([ortho], random_run, tmp_path / "d", progress=False)
    assert dense.maps[0].method == "dense" and "Note:" not in dense.summary()
    assert dense.maps[0].grid.stride_x < TILE_PX // 2  # fine cells
    strided = map_orthos([ortho], random_run, tmp_path / "s", stride=8, progress=False)
    assert strided.maps[0].method == "windows" and strided.maps[0].grid.stride_x == 8
    global_run = make_colour_model(tmp_path / "global")
    windows = map_orthos([ortho], global_run, tmp_path / "w", progress=False)
    assert windows.maps[0].method == "windows"
    assert "Note: windows mode: backbone 'test-colour' cannot map densely" in windows.summary()


def test_footprint_weights_exact():
    # Features every 2.5 px from px 10; a footprint [10, 15) is features 0 and 1, [11, 13)
    # is 1.5 px of feature 0 and 0.5 px of feature 1.
    w = footprint_weights(np.array([10, 11]), np.array([15, 13]), 10, 2.5, 3)
    np.testing.assert_allclose(w, [[0.5, 0.5, 0.0], [0.75, 0.25, 0.0]])
    assert region_bounds(70, 130, 32, 1, 1000) == (32, 192)
    # Clamped to the lattice cells holding the ortho: from 0, and to 128 for 100 px.
    assert region_bounds(0, 20, 32, 1, 1000) == (0, 64)
    assert region_bounds(70, 100, 32, 1, 100) == (32, 128)


@pytest.mark.parametrize("cell_m", [0.2, 0.4, 0.8, 1.6])
def test_alignment_and_cog_at_cell_sizes(synth, random_run, tmp_path, cell_m):
    ortho = synth.orthos[0]
    out = tmp_path / "d"
    result = map_orthos([ortho], random_run, out, method="dense", cell_size=cell_m, progress=False)
    cell_px = round(cell_m / GSD)
    with rasterio.open(ortho) as src:
        ortho_transform, crs = src.transform, src.crs
    for kind in ("prob", "presence", "uncertainty"):
        path = out / f"{ortho.stem}_{kind}.tif"
        data, transform, (w, h) = _read(path)
        assert transform == ortho_transform * rasterio.Affine.scale(cell_px, cell_px)
        assert (w, h) == (math.ceil(SIZE_PX / cell_px), math.ceil(SIZE_PX / cell_px))
        assert cog_validate(str(path))[0]
        with rasterio.open(path) as src:
            assert src.crs == crs
        assert (data != 255).all()  # no nodata in the synthetic ortho
    record = json.loads((out / f"{ortho.stem}.map.json").read_text())
    assert record["settings"]["method"] == "dense"
    assert record["settings"]["cell_size"] == cell_m
    assert result.maps[0].grid.stride_x == cell_px


def test_default_cell_is_one_feature_step(synth, random_run, tmp_path):
    # random-small: 64 px input per 32 px window, stride 8 -> one feature per 4 ortho px.
    result = map_orthos([synth.orthos[0]], random_run, tmp_path, method="dense", progress=False)
    assert (result.maps[0].grid.stride_x, result.maps[0].grid.stride_y) == (4, 4)


def test_seams_one_block_equals_four_blocks(synth, random_run, tmp_path, fresh_dense_models):
    ortho = synth.orthos[0]
    one = map_orthos(
        [ortho],
        random_run,
        tmp_path / "one",
        method="dense",
        cell_size=0.4,
        block_windows=20,
        progress=False,
    )
    four = map_orthos(
        [ortho],
        random_run,
        tmp_path / "four",
        method="dense",
        cell_size=0.4,
        block_windows=10,
        progress=False,
    )
    assert (one.maps[0].blocks, four.maps[0].blocks) == (1, 4)
    a, b = _prob(tmp_path / "one", ortho), _prob(tmp_path / "four", ortho)
    assert len(np.unique(a)) > 10  # the model says different things in different places
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("context", [False, True], ids=["tiled", "context"])
def test_seams_both_passes(synth, random_run, context):
    """Block results put together: one block == four blocks, for the tiled pass and for the
    context pass (one image per block with a window of margin).
    """
    grid, settings = _window_settings(synth.orthos[0], random_run)
    grid = MapGrid(grid.width, grid.height, TILE_PX, TILE_PX, 8, 8, grid.transform)
    settings = map_predict.DenseSettings(**{**settings.__dict__, "context": context})

    def cells(block_windows: int) -> tuple[int, np.ndarray]:
        out = np.full((grid.rows, grid.cols), np.nan)
        blocks = map_predict.plan_dense_blocks(grid, block_windows)
        for block in blocks:
            part = map_predict.predict_dense_block(grid, block, settings)
            h, w = part.weights.shape
            out[part.row0 : part.row0 + h, part.col0 : part.col0 + w] = part.sums[1]
        return len(blocks), out

    (n1, one), (n4, four) = cells(20), cells(10)
    assert (n1, n4) == (1, 4)
    assert not np.isnan(one).any()
    np.testing.assert_allclose(one, four, atol=1e-5)


def test_dask_equals_single_process(synth, random_run, tmp_path):
    ortho = synth.orthos[0]
    kwargs = dict(method="dense", cell_size=0.4, block_windows=10, progress=False)
    map_orthos([ortho], random_run, tmp_path / "single", **kwargs)
    map_orthos([ortho], random_run, tmp_path / "dask", workers=2, processes=False, **kwargs)
    for suffix in ("_prob.tif", "_presence.tif", "_uncertainty.tif", "_presence.geojson"):
        name = f"{ortho.stem}{suffix}"
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes()


def test_jpeg_ycbcr_bigtiff_input(synth, random_run, tmp_path):
    """A tiled JPEG-in-TIFF (YCbCr) BigTIFF as survey software writes it maps exactly like a
    plain GeoTIFF of the same decoded pixels.
    """
    ortho = synth.orthos[0]
    jpeg, plain = tmp_path / "jpeg.tif", tmp_path / "plain.tif"
    with rasterio.open(ortho) as src:
        profile = src.profile
        data = src.read([1, 2, 3])
    profile.update(
        count=3,
        dtype="uint8",
        nodata=None,
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="JPEG",
        photometric="YCBCR",
        bigtiff="YES",
    )
    with rasterio.open(jpeg, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(jpeg) as src:
        assert src.compression.name == "jpeg" and src.photometric.name == "ycbcr"
        decoded = src.read()
        profile = src.profile
    assert jpeg.read_bytes()[:4] in (b"II+\x00", b"MM\x00+")  # BigTIFF magic
    profile.update(compress="deflate", photometric="RGB", bigtiff="NO")
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(decoded)
    kwargs = dict(method="dense", cell_size=0.4, progress=False)
    map_orthos([jpeg], random_run, tmp_path / "a", **kwargs)
    map_orthos([plain], random_run, tmp_path / "b", **kwargs)
    np.testing.assert_array_equal(_prob(tmp_path / "a", jpeg), _prob(tmp_path / "b", plain))


def test_device_auto_without_gpu(synth, random_run, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    map_orthos(
        [synth.orthos[0]], random_run, tmp_path, method="dense", device="auto", progress=False
    )
    record = json.loads((tmp_path / f"{synth.orthos[0].stem}.map.json").read_text())
    assert record["settings"]["device"] == "cpu"


def test_inputs_reach_the_backbone_channels_last(synth, random_run):
    """Both paths hand the backbone channels-last tensors on purpose (not by accident)."""
    seen: list[bool] = []

    def spy(_module, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    model, card = map_predict.cached_model(
        str(random_run), load_model(random_run)[1].weights_sha256
    )
    handle = model.backbone.register_forward_pre_hook(spy)
    try:
        images = np.random.default_rng(0).integers(0, 255, (3, TILE_PX, TILE_PX, 3), np.uint8)
        map_predict.predict_windows(model, card, images)
        grid, settings = _window_settings(synth.orthos[0], random_run)
        settings = map_predict.DenseSettings(**{**settings.__dict__, "run_dir": str(random_run)})
        dense, _ = map_predict.cached_dense_model(grid, settings)
        batch = dense.prepare(images[0], (0, TILE_PX, 0, TILE_PX))
        assert batch.is_contiguous(memory_format=torch.channels_last)
        assert batch.shape[1] == 3 and not batch.is_contiguous()  # a real NHWC layout
        region = map_predict.read_dense_block(grid, map_predict.Block(0, (0, 2), (0, 2)), settings)
        map_predict.classify_dense_block(grid, region, settings)
    finally:
        handle.remove()
    assert seen and all(seen)


def test_cell_size_checks():
    assert cell_px_for(0.4, 0.05, 4, "x") == 8
    with pytest.raises(Exception, match="whole number of ortho pixels"):
        cell_px_for(0.43, 0.05, 4, "x")
    with pytest.raises(Exception, match="finer than the backbone"):
        cell_px_for(0.15, 0.05, 4, "x")


def test_dinov2_refused_by_name():
    with pytest.raises(DenseUnsupportedError, match="CLS token"):
        feature_extractor("dinov2", torch.nn.Identity())


def test_resume_after_interruption_gives_same_bytes(synth, random_run, tmp_path, monkeypatch):
    """A dense run killed after two blocks resumes from them and writes the same bytes."""
    ortho = synth.orthos[0]
    kwargs = dict(method="dense", cell_size=0.4, block_windows=10, progress=False)
    map_orthos([ortho], random_run, tmp_path / "whole", **kwargs)
    real = map_predict.classify_dense_block
    calls = []

    def dying(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run stops here, as if killed
        calls.append(1)
        return real(*args, **kw)

    from spurge.mapping import run as map_run

    monkeypatch.setattr(map_run, "classify_dense_block", dying)
    with pytest.raises(KeyboardInterrupt):
        map_orthos([ortho], random_run, tmp_path / "resumed", **kwargs)
    monkeypatch.setattr(map_run, "classify_dense_block", real)
    result = map_orthos([ortho], random_run, tmp_path / "resumed", **kwargs)
    assert (result.maps[0].blocks, result.maps[0].resumed_blocks) == (4, 2)
    for suffix in ("_prob.tif", "_presence.tif", "_uncertainty.tif", "_presence.geojson", ".gpkg"):
        name = f"{ortho.stem}{suffix}"
        assert (tmp_path / "whole" / name).read_bytes() == (
            tmp_path / "resumed" / name
        ).read_bytes()


def test_gate_caps_cells_by_covering_windows():
    """Cells: 2 px; windows: 4 px every 2 px, at 0, 2 and 4 (P = 0.5, 1 - s, 1 - s). A cell
    whose own CAM says present (s) but whose best covering window is 50/50 gets 0.5.
    """
    from spurge.mapping.dense import gate_by_windows

    sig = 1 / (1 + math.exp(-4))
    probs = np.stack([np.full((1, 4), sig), np.full((1, 4), 1 - sig)])
    probs[:, 0, 0] = 1 - sig, sig
    centres_c = np.array([1, 3, 5, 7])  # cell centres against windows [0, 4), [2, 6), [4, 8)
    cover_c = (centres_c[:, None] >= [0, 2, 4]) & (centres_c[:, None] < [4, 6, 8])
    out = gate_by_windows(probs, np.array([[0.5, 1 - sig, 1 - sig]]), np.ones((1, 1), bool),
                          cover_c, 1)  # fmt: skip
    np.testing.assert_allclose(out[1, 0], [0.5, 1 - sig, 1 - sig, 1 - sig], atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=0), 1.0)
