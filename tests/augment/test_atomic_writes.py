"""A failure in the middle of writing any augment file (a synthetic PNG, ``synthetic.parquet``,
a token file) leaves nothing half-written under a final name, and a re-run completes.

Each failure is injected inside the writer after some bytes reached the file, as a full disk
would (``OSError`` errno 28).
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
from PIL import Image

from spurge.augment import GenerationSettings, TokenSettings, augment
from spurge.io.atomic import TMP_PREFIX
from spurge.io.synthetic import read_synthetic_manifest
from tests.builders import make_small_tiles, tiny_config

FAST = dict(model="tiny-random", progress=False)
PLAIN = GenerationSettings(method="real-guidance", per_tile=3, steps=2, strengths=(1.0,))
N_TRAIN = 4


def disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def no_temporaries(store: Path) -> bool:
    return not [p for p in store.rglob("*") if p.name.startswith(TMP_PREFIX)]


def check_store_is_whole(store: Path) -> pd.DataFrame:
    """Every PNG decodes, the manifest reads back and lists exactly the PNGs on disk."""
    rows = read_synthetic_manifest(store)
    pngs = sorted((store / "images").glob("*/*.png"))
    for png in pngs:
        with Image.open(png) as img:
            img.load()
    assert sorted(rows["path"]) == sorted(str(p.relative_to(store)) for p in pngs)
    assert no_temporaries(store)
    return rows


@pytest.fixture
def tiles(tmp_path):
    return make_small_tiles(tmp_path / "tiles")


def test_failure_mid_png(tiles, tmp_path, monkeypatch):
    store = tmp_path / "syn"
    real_save = Image.Image.save
    calls = {"n": 0}
    broken: list[Path] = []

    def save_dies_on_fifth(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)  # half a PNG, then the disk
            broken.append(Path(fp))
            raise disk_full(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_dies_on_fifth)
    with pytest.raises(OSError, match="No space left"):
        augment(tiles, tiny_config(), store, PLAIN, **FAST)
    monkeypatch.undo()
    rows = check_store_is_whole(store)
    assert len(rows) == 4  # the four images written before the failure
    assert not broken[0].exists()
    final = broken[0].name.split("-", 3)[-1]  # .spurge-tmp-<id>-<final name>
    assert final.endswith(".png") and not list((store / "images").glob(f"*/{final}"))

    again = augment(tiles, tiny_config(), store, PLAIN, **FAST)
    assert again.reused == 4 and again.generated == 3 * N_TRAIN - 4
    assert len(check_store_is_whole(store)) == 3 * N_TRAIN


def test_failure_mid_manifest(tiles, tmp_path, monkeypatch):
    store = tmp_path / "syn"
    one = GenerationSettings(method="real-guidance", per_tile=1, steps=2, strengths=(1.0,))
    augment(tiles, tiny_config(), store, one, **FAST)
    before = (store / "synthetic.parquet").read_bytes()
    real_to_parquet = pd.DataFrame.to_parquet

    def to_parquet_dies(self, path, *args, **kwargs):
        if Path(path).name.endswith("synthetic.parquet"):
            Path(path).write_bytes(b"PAR1" + b"\0" * 64)
            raise disk_full(path)
        return real_to_parquet(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet_dies)
    with pytest.raises(OSError, match="No space left"):
        augment(tiles, tiny_config(), store, PLAIN, **FAST)
    monkeypatch.undo()
    # The old manifest is untouched (not a half-written one), no temporary is left; the new
    # images are on disk, complete, and not yet listed.
    assert (store / "synthetic.parquet").read_bytes() == before
    assert no_temporaries(store)
    assert len(list((store / "images").glob("*/*.png"))) == 3 * N_TRAIN
    assert len(read_synthetic_manifest(store)) == N_TRAIN

    again = augment(tiles, tiny_config(), store, PLAIN, **FAST)
    assert again.generated == 0 and again.reused == 3 * N_TRAIN  # images on disk are the truth
    assert len(check_store_is_whole(store)) == 3 * N_TRAIN


def test_failure_mid_token_file(tiles, tmp_path, monkeypatch):
    store = tmp_path / "syn"
    settings = GenerationSettings(per_tile=1, steps=2, strengths=(1.0,))
    tokens = TokenSettings(steps=1, batch_size=1)
    real_save_file = safetensors.torch.save_file

    def save_file_dies_on_present(tensors, filename, *args, **kwargs):
        if "<present>" in tensors:
            Path(filename).write_bytes(b"\x08\0\0\0\0\0\0\0{}")
            raise disk_full(filename)
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file_dies_on_present)
    with pytest.raises(OSError, match="No space left"):
        augment(tiles, tiny_config(), store, settings, token_settings=tokens, **FAST)
    monkeypatch.undo()
    assert sorted(p.name for p in (store / "tokens").iterdir()) == ["absent.safetensors"]
    safetensors.torch.load_file(str(store / "tokens" / "absent.safetensors"))  # whole
    assert not (store / "synthetic.parquet").exists()

    again = augment(tiles, tiny_config(), store, settings, token_settings=tokens, **FAST)
    trained = {name: t.trained for name, t in again.tokens.tokens.items()}
    assert trained == {"absent": False, "present": True}  # the finished token is re-used
    rows = check_store_is_whole(store)
    assert len(rows) == N_TRAIN and rows["token_hash"].notna().all()
    vectors = safetensors.torch.load_file(str(store / "tokens" / "present.safetensors"))
    assert np.isfinite(vectors["<present>"].numpy()).all()
