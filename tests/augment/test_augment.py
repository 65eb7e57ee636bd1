"""`spurge augment` with the tiny-random pipeline: tokens, plan, store, resume, errors."""

from __future__ import annotations

import io
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from spurge.augment import (
    SYNTHETIC_COLUMNS,
    GenerationSettings,
    TokenSettings,
    augment,
    load_tokens,
)
from spurge.augment import run as run_module
from spurge.augment.filters import FilterSettings
from spurge.augment.generate import BatchSampler
from spurge.augment.models import build_clip_tokenizer, default_dtype, load_model
from spurge.cli import cli
from spurge.device import resolve_device
from spurge.errors import ConfigError, DeviceError, ManifestError, ModelError
from spurge.io.synthetic import read_synthetic_manifest, synthetic_image_path
from tests.builders import make_small_tiles as make_tiles
from tests.builders import tiny_config
from tests.conftest import require_testdata

FAST = dict(model="tiny-random", progress=False)
TOKENS = TokenSettings(steps=3, batch_size=2, seed=0)
PER_TILE = 4
N_TRAIN = 4  # make_tiles: 2 train tiles per class


def gen(**settings) -> GenerationSettings:
    """Generation settings small enough for tests (4 steps, batches of 4)."""
    return GenerationSettings(**{"steps": 4, "batch_size": 4, **settings})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    tiles = make_tiles(root / "tiles")
    config = tiny_config()
    result = augment(
        tiles, config, root / "syn", gen(per_tile=PER_TILE), token_settings=TOKENS, **FAST
    )
    return root, tiles, config, result


def test_clip_tokenizer_matches_sd():
    tok = build_clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a drone photo of").input_ids == [49406, 320, 9397, 1125, 539, 49407]
    assert tok.model_max_length == 77


def test_token_files_trained_and_reloadable(store):
    root, _, config, result = store
    loaded = load_model("tiny-random", device="cpu")
    embeddings = loaded.pipe.text_encoder.get_input_embeddings().weight
    for name, spec in zip(config.class_names, config.classes, strict=True):
        path = root / "syn" / "tokens" / f"{name}.safetensors"
        assert path.is_file() and result.tokens.tokens[name].trained
        state = load_file(str(path))
        assert list(state) == [f"<{name}>"]
        vectors = state[f"<{name}>"]
        assert vectors.shape == (4, embeddings.shape[1])
        # Training moved the rows away from their initializer-word start.
        init_ids = loaded.pipe.tokenizer(spec.initializer, add_special_tokens=False).input_ids
        start = embeddings[init_ids].mean(0).detach()
        assert not torch.allclose(vectors, start.expand_as(vectors))
    load_tokens(loaded, root / "syn" / "tokens", config)
    tok = loaded.pipe.tokenizer
    for name in config.class_names:
        ids = tok.convert_tokens_to_ids([f"<{name}>", f"<{name}>_1", f"<{name}>_3"])
        assert all(i >= 49408 for i in ids)
        vectors = load_file(str(root / "syn" / "tokens" / f"{name}.safetensors"))[f"<{name}>"]
        weight = loaded.pipe.text_encoder.get_input_embeddings().weight
        all_ids = tok.convert_tokens_to_ids([f"<{name}>"] + [f"<{name}>_{i}" for i in (1, 2, 3)])
        assert torch.allclose(weight[all_ids].detach(), vectors)
    # Diffusers' own prompt conversion expands the multi-vector token.
    converted = loaded.pipe.maybe_convert_prompt("a drone photo of <present>", tok)
    assert "<present>_3" in converted


def test_tokens_reproducible_for_a_seed(store, tmp_path):
    root, tiles, config, _ = store
    from spurge.augment import train_tokens

    again = train_tokens(tiles, config, tmp_path, "tiny-random", TOKENS, progress=False)
    for name in config.class_names:
        a = load_file(str(root / "syn" / "tokens" / f"{name}.safetensors"))
        b = load_file(str(again.tokens[name].path))
        assert torch.equal(a[f"<{name}>"], b[f"<{name}>"])


def test_store_rows_complete(store):
    root, tiles, _, result = store
    rows = read_synthetic_manifest(root / "syn")
    assert list(rows.columns) == list(SYNTHETIC_COLUMNS)
    assert len(rows) == PER_TILE * N_TRAIN == result.generated == result.planned
    assert rows["image_id"].is_unique
    required = [c for c in SYNTHETIC_COLUMNS if c != "context"]
    assert not rows[required].isna().any().any()
    assert rows.groupby("source_tile_id").size().eq(PER_TILE).all()
    assert set(rows["strength"]) == {1.0, 0.75, 0.5, 0.25}
    assert set(rows["method"]) == {"da-fusion"}
    assert set(rows["context"].dropna()) <= {"grassland", "snow", "mountain"}
    assert rows["context"].notna().any()
    tile_rows = pd.read_parquet(tiles / "tiles.parquet").set_index("tile_id")
    assert (rows["label"].values == tile_rows.loc[rows["source_tile_id"], "label"].values).all()
    for row in rows.itertuples():
        assert f"<{row.label}>" in row.prompt
        assert row.path == f"images/{row.label}/{row.image_id}.png"
        with Image.open(synthetic_image_path(root / "syn", row.path)) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
    assert "tiny-random" in result.summary() and "noise-like" in result.summary()


def test_rerun_is_a_noop(store):
    root, tiles, config, _ = store
    manifest = root / "syn" / "synthetic.parquet"
    before = (manifest.stat().st_mtime_ns, manifest.read_bytes())
    again = augment(
        tiles, config, root / "syn", gen(per_tile=PER_TILE), token_settings=TOKENS, **FAST
    )
    assert again.generated == 0 and again.reused == PER_TILE * N_TRAIN
    assert not again.model_loaded  # nothing to do: Stable Diffusion is never loaded
    assert not any(t.trained for t in again.tokens.tokens.values())
    assert (manifest.stat().st_mtime_ns, manifest.read_bytes()) == before


def test_resume_after_interruption(store, tmp_path, monkeypatch):
    root, tiles, config, _ = store
    out = tmp_path / "syn"
    shutil.copytree(root / "syn" / "tokens", out / "tokens")
    real = BatchSampler.generate
    calls = {"n": 0}

    def dies_after_one_batch(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(BatchSampler, "generate", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        augment(tiles, config, out, gen(per_tile=PER_TILE), token_settings=TOKENS, **FAST)
    partial = read_synthetic_manifest(out)
    assert len(partial) == 4  # one batch finished and was recorded
    monkeypatch.setattr(BatchSampler, "generate", real)
    resumed = augment(tiles, config, out, gen(per_tile=PER_TILE), token_settings=TOKENS, **FAST)
    assert resumed.reused == 4 and resumed.generated == PER_TILE * N_TRAIN - 4
    full = read_synthetic_manifest(root / "syn")
    rows = read_synthetic_manifest(out)
    pd.testing.assert_frame_equal(rows, full)
    for rel in rows["path"]:  # same images as the uninterrupted run (batching aside)
        a = np.asarray(Image.open(out / rel), dtype=int)
        b = np.asarray(Image.open(root / "syn" / rel), dtype=int)
        assert np.abs(a - b).max() <= 2


def test_changed_parameter_regenerates_only_what_it_affects(store, tmp_path):
    root, tiles, config, _ = store
    out = tmp_path / "syn"
    shutil.copytree(root / "syn", out)
    more = augment(tiles, config, out, gen(per_tile=PER_TILE + 1), token_settings=TOKENS, **FAST)
    assert more.generated == N_TRAIN and more.reused == PER_TILE * N_TRAIN
    fewer = augment(tiles, config, out, gen(per_tile=2), token_settings=TOKENS, **FAST)
    assert fewer.generated == 0 and fewer.pruned == (PER_TILE + 1 - 2) * N_TRAIN
    assert len(read_synthetic_manifest(out)) == 2 * N_TRAIN
    assert len(list((out / "images").glob("*/*.png"))) == 2 * N_TRAIN


def test_other_methods(store, tmp_path):
    root, tiles, config, _ = store
    ti = augment(
        tiles,
        config,
        tmp_path / "ti",
        gen(method="textual-inversion", per_tile=2),
        tokens_dir=root / "syn" / "tokens",
        **FAST,
    )
    rows = read_synthetic_manifest(tmp_path / "ti")
    assert ti.generated == 2 * N_TRAIN and rows["context"].isna().all()
    assert all(
        p == f"a drone photo of <{lab}>" for p, lab in zip(rows.prompt, rows.label, strict=True)
    )
    rg = augment(tiles, config, tmp_path / "rg", gen(method="real-guidance", per_tile=2), **FAST)
    rows = read_synthetic_manifest(tmp_path / "rg")
    assert rg.generated == 2 * N_TRAIN and rg.tokens is None
    assert not (tmp_path / "rg" / "tokens").exists()
    assert rows["token_hash"].isna().all() and not rows["prompt"].str.contains("<").any()
    assert "leafy spurge with yellow bracts" in set(" ".join(rows["prompt"]).split(" of "))


def test_sampler_encodes_prompts_and_tiles_once(store, tmp_path):
    root, tiles, config, _ = store
    from spurge.augment.generate import GenerationSettings, batches_by_strength, plan_images
    from spurge.augment.textual_inversion import labelled_train_tiles

    loaded = load_model("tiny-random", device="cpu")
    train = labelled_train_tiles(tiles, config)
    items = plan_images(
        tiles, train, config, GenerationSettings(per_tile=8, steps=4), loaded.model_hash, None
    )
    load_tokens(loaded, root / "syn" / "tokens", config)
    sampler = BatchSampler(loaded)
    for batch in batches_by_strength(items, 8):
        sampler.generate(batch)
    assert sampler.stats.text_encodes == len({i.prompt for i in items}) + 1  # + unconditional
    assert sampler.stats.vae_encodes == N_TRAIN  # once per tile, not per variant
    assert sampler.stats.images == 8 * N_TRAIN


def test_missing_and_mismatched_tokens(store, tmp_path):
    root, tiles, config, _ = store
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    shutil.copy(root / "syn" / "tokens" / "absent.safetensors", tokens)
    with pytest.raises(ModelError, match=r"present\.safetensors"):
        augment(tiles, config, tmp_path / "a", gen(per_tile=1), tokens_dir=tokens, **FAST)
    save_file({"<present>": torch.zeros(4, 7)}, str(tokens / "present.safetensors"))
    with pytest.raises(ModelError, match=r"present\.safetensors.*width"):
        augment(tiles, config, tmp_path / "b", gen(per_tile=1), tokens_dir=tokens, **FAST)
    save_file({"<other>": torch.zeros(4, 32)}, str(tokens / "present.safetensors"))
    with pytest.raises(ModelError, match="expected exactly"):
        augment(tiles, config, tmp_path / "c", gen(per_tile=1), tokens_dir=tokens, **FAST)


def test_attention_slicing_from_the_cli_to_the_pipeline(store, tmp_path, monkeypatch):
    """--attention-slicing (which the out-of-memory advice names) reaches the loaded
    pipeline: its UNet attention runs sliced, and the images are the same up to rounding.
    """
    from diffusers.models.attention_processor import SlicedAttnProcessor

    from spurge.augment import models

    plain = load_model("tiny-random", device="cpu")
    sliced = load_model("tiny-random", device="cpu", attention_slicing=True)
    kinds = {type(p) for p in sliced.pipe.unet.attn_processors.values()}
    assert kinds == {SlicedAttnProcessor}
    assert SlicedAttnProcessor not in {type(p) for p in plain.pipe.unet.attn_processors.values()}

    seen: list[bool] = []
    real = models.load_model

    def spy(*args, **kwargs):
        loaded = real(*args, **kwargs)
        procs = loaded.pipe.unet.attn_processors.values()
        seen.append(all(isinstance(p, SlicedAttnProcessor) for p in procs))
        return loaded

    monkeypatch.setattr(models, "load_model", spy)
    root, tiles, _, _ = store
    import yaml

    config_yaml = tmp_path / "tiny.yaml"
    config_yaml.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    common = ["augment", str(tiles), "--config", str(config_yaml), "--model", "tiny-random",
              "--per-tile", "1", "--steps", "4", "--strengths", "0.5",
              "--tokens", str(root / "syn" / "tokens")]  # fmt: skip
    res = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "a"), "--attention-slicing"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert seen == [True, False]
    images_a = sorted((tmp_path / "a").rglob("*.png"))
    images_b = sorted((tmp_path / "b").rglob("*.png"))
    assert len(images_a) == N_TRAIN and [p.name for p in images_a] == [p.name for p in images_b]
    for a, b in zip(images_a, images_b, strict=True):
        diff = np.abs(np.asarray(Image.open(a), int) - np.asarray(Image.open(b), int))
        assert diff.max() <= 2


def test_cli_runs_and_reports_tiny_random(store, tmp_path):
    root, tiles, _, _ = store
    config_yaml = tmp_path / "tiny.yaml"
    import yaml

    config_yaml.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    args = [
        "augment",
        str(tiles),
        "--config",
        str(config_yaml),
        "--model",
        "tiny-random",
        "--per-tile",
        "1",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "syn"),
        "--tokens",
        str(root / "syn" / "tokens"),
        "--strengths",
        "0.5",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "tiny-random" in res.output and "noise-like" in res.output
    assert len(read_synthetic_manifest(tmp_path / "syn")) == N_TRAIN

    res = CliRunner().invoke(cli, [*args[:-1], "1.5"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "strength 1.5" in res.output
    assert len(res.output.strip().splitlines()) == 1

    res = CliRunner().invoke(cli, [*args[:6], "--model", str(tmp_path / "nope"), *args[8:]])
    assert res.exit_code == 1 and "model path does not exist" in res.output

    res = CliRunner().invoke(
        cli,
        [
            "augment",
            str(tiles),
            "--config",
            str(config_yaml),
            "--model",
            "tiny-random",
            "--out",
            str(tmp_path / "t"),
            "--train-tokens-only",
            "--token-steps",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Textual inversion" in res.output and "--train-tokens-only" in res.output
    assert sorted(p.name for p in (tmp_path / "t" / "tokens").iterdir()) == [
        "absent.safetensors",
        "present.safetensors",
    ]
    assert not (tmp_path / "t" / "synthetic.parquet").exists()


def test_bad_tile_manifests(tmp_path):
    config = tiny_config()
    import geopandas as gpd

    from spurge.io.tiles import empty_tile_frame, write_tile_manifest

    empty = tmp_path / "empty"
    empty.mkdir()
    write_tile_manifest(empty_tile_frame("EPSG:32612"), empty)
    with pytest.raises(ManifestError, match="empty"):
        augment(empty, config, tmp_path / "o", **FAST)

    tiles = make_tiles(tmp_path / "tiles")
    frame = gpd.read_parquet(tiles / "tiles.parquet")
    frame["label"] = None
    write_tile_manifest(frame, tiles)
    with pytest.raises(ManifestError, match="no labelled tiles"):
        augment(tiles, config, tmp_path / "o", **FAST)

    frame = gpd.read_parquet(make_tiles(tmp_path / "t2") / "tiles.parquet")
    frame.loc[(frame["label"] == "present") & (frame["split"] == "train"), "split"] = "val"
    write_tile_manifest(frame, tmp_path / "t2")
    with pytest.raises(ManifestError, match="'present' has zero labelled training tiles"):
        augment(tmp_path / "t2", config, tmp_path / "o", **FAST)

    with pytest.raises(ManifestError, match="no tile manifest"):
        augment(tmp_path / "missing", config, tmp_path / "o", **FAST)


def test_bad_parameters(store, tmp_path):
    _, tiles, config, _ = store
    with pytest.raises(ConfigError, match="out of range"):
        augment(tiles, config, tmp_path, gen(strengths=(0.0, 0.5)), **FAST)
    bad = config.model_copy(update={"prompt_template": "a drone photo"})
    with pytest.raises(ConfigError, match=r"\{token\}"):
        augment(tiles, bad, tmp_path, gen(method="real-guidance"), **FAST)
    with pytest.raises(ModelError, match="single-file model"):
        augment(tiles, config, tmp_path, **{**FAST, "model": str(tiles / "tiles.parquet")})
    empty_model = tmp_path / "model"
    empty_model.mkdir()
    with pytest.raises(ModelError, match=r"model_index\.json"):
        augment(tiles, config, tmp_path / "o", **{**FAST, "model": str(empty_model)})


def test_clip_filter(store, tmp_path, monkeypatch):
    _, tiles, config, _ = store
    from spurge.augment.filters import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    common = dict(generation=gen(per_tile=1, method="real-guidance"), **FAST)

    def clip_filter(threshold: float, model: str = str(clip)) -> FilterSettings:
        return FilterSettings("clip", model, threshold)

    kept = augment(tiles, config, tmp_path / "keep", filter_settings=clip_filter(-1.0), **common)
    assert kept.generated == N_TRAIN and kept.rejected == 0
    dropped = augment(tiles, config, tmp_path / "drop", filter_settings=clip_filter(1.0), **common)
    assert dropped.generated == 0 and dropped.rejected_now == N_TRAIN
    assert f"dropped {N_TRAIN} new images" in dropped.summary()
    assert len(read_synthetic_manifest(tmp_path / "drop")) == 0
    again = augment(tiles, config, tmp_path / "drop", filter_settings=clip_filter(1.0), **common)
    assert again.generated == 0 and again.rejected_now == 0 and not again.model_loaded
    # CLIP scores on the generation device (it ran on the CPU even when generating on CUDA).
    devices = []
    real_clip = run_module.ClipFilter

    def spy(*args, **kwargs):
        devices.append(torch.device(kwargs.get("device", "cpu")))
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(run_module, "ClipFilter", spy)
    augment(
        tiles,
        config,
        tmp_path / "dev",
        filter_settings=clip_filter(-1.0),
        **{**common, "device": "cpu"},
    )
    assert devices == [torch.device("cpu")]
    monkeypatch.undo()
    with pytest.raises(ModelError, match="CLIP model"):
        augment(
            tiles,
            config,
            tmp_path / "x",
            filter_settings=clip_filter(0.2, str(tmp_path / "no")),
            **common,
        )


def test_device_and_dtype_selection(monkeypatch):
    """auto -> CUDA in fp16 when a GPU is there, else CPU in float32 (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(None) == torch.device("cuda")
    assert default_dtype(resolve_device("auto")) == torch.float16
    assert default_dtype(resolve_device("cuda:0")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert default_dtype(resolve_device("auto")) == torch.float32
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")


def test_tiny_random_half_precision_cast_is_quiet():
    """The fp16 cast CUDA runs do, on the CPU: every module in fp16, no spurious warning."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        loaded = load_model("tiny-random", device="cpu", dtype=torch.float16)
    finally:
        logger.removeHandler(handler)
    pipe = loaded.pipe
    assert loaded.dtype == pipe.unet.dtype == pipe.vae.dtype == torch.float16
    assert pipe.text_encoder.dtype == torch.float16
    assert not [r for r in records if "kept in float32" in r.getMessage()]
    assert diffusers_logging.get_verbosity() == verbosity


def test_local_diffusers_folder_loads_and_hashes(tmp_path):
    from spurge.augment.models import (
        build_tiny_random_pipeline,
        describe_model,
        save_pipeline,
    )

    folder = save_pipeline(build_tiny_random_pipeline(), tmp_path / "sd")
    model_id, model_hash = describe_model(str(folder))
    assert model_id == str(folder) and len(model_hash) == 64
    loaded = load_model(str(folder), device="cpu", sampler="pndm")
    assert loaded.model_hash == model_hash and not loaded.is_tiny_random
    assert type(loaded.pipe.scheduler).__name__ == "PNDMScheduler"
    assert loaded.resolution == 64 and loaded.dtype == torch.float32
    (folder / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load diffusion model"):
        load_model(str(folder), device="cpu")


def test_help_is_real():
    res = CliRunner().invoke(cli, ["augment", "--help"])
    assert res.exit_code == 0
    for option in ("--per-tile", "--batch-size", "--sampler", "--train-tokens-only", "--filter"):
        assert option in res.output


def test_real_drone_tiles(tmp_path):
    """Tiles cut from a real georeferenced drone ortho (australia.tif) go through augment."""
    ortho = require_testdata("australia.tif")
    import geopandas as gpd
    from rasterio.windows import Window, bounds
    from shapely.geometry import box

    from spurge.io.raster import compute_scaling, open_ortho, read_window_rgb8
    from spurge.io.tiles import write_tile_manifest

    tiles = tmp_path / "tiles"
    (tiles / "images").mkdir(parents=True)
    rows = []
    with open_ortho(ortho) as src:
        scaling = compute_scaling(src, [1, 2, 3])
        for k in range(2):
            window = Window(k * 64, 0, 64, 64)
            rgb, _ = read_window_rgb8(src, window, scaling)
            rel = f"images/real_{k}.png"
            Image.fromarray(rgb).save(tiles / rel)
            rows.append(
                {
                    "tile_id": f"real_{k}",
                    "path": rel,
                    "label": ["absent", "present"][k],
                    "site": "aus",
                    "plot_id": f"p{k}",
                    "split": "train",
                    "source": str(ortho),
                    "source_sha256": "0",
                    "row_off": 0,
                    "col_off": k * 64,
                    "height": 64,
                    "width": 64,
                    "crs": src.crs.to_string(),
                    "gsd_m": float(src.res[0]),
                    "geometry": box(*bounds(window, src.transform)),
                }
            )
        crs = src.crs
    write_tile_manifest(gpd.GeoDataFrame(rows, geometry="geometry", crs=crs), tiles)
    result = augment(
        tiles, tiny_config(), tmp_path / "syn", gen(method="real-guidance", per_tile=2), **FAST
    )
    rows = read_synthetic_manifest(tmp_path / "syn")
    assert result.generated == 4 and set(rows["source_tile_id"]) == {"real_0", "real_1"}
    for rel in rows["path"]:
        with Image.open(tmp_path / "syn" / rel) as img:
            assert img.size == (64, 64)


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal(store, tmp_path, monkeypatch, capsys):
    """Like the other stages (tqdm ``disable=None``): no bars into a pipe or a log file."""
    _, tiles, config, _ = store
    common = dict(model="tiny-random", token_settings=TokenSettings(steps=2, batch_size=2))
    settings = gen(per_tile=1, strengths=(1.0,))
    augment(tiles, config, tmp_path / "pipe", settings, **common)  # progress left at its default
    err = capsys.readouterr().err
    assert "augment:" not in err and "token <" not in err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    augment(tiles, config, tmp_path / "tty", settings, **common)
    assert "augment:" in terminal.getvalue() and "token absent:" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    augment(tiles, config, tmp_path / "quiet", settings, progress=False, **common)
    assert quiet.getvalue() == ""
