"""Real-size SD 1.5 (random weights): every --model loading path, the LDM key layout, and
resumable textual inversion.

Fast tests use the tiny-random pipeline; ``slow`` ones build the real architecture (~860 M
UNet parameters) on CPU once, save it as a diffusers folder, a single LDM-layout file and a
hub cache under tmp_path, load each through ``load_model`` and sample one image at 64 px,
1 step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spurge.augment.generate import BatchSampler, PlanItem
from spurge.augment.models import (
    RANDOM_WEIGHTS_NOTE,
    build_clip_tokenizer,
    build_tiny_random_pipeline,
    load_model,
    save_pipeline,
)
from spurge.augment.realsize import save_single_file
from spurge.augment.textual_inversion import TokenSettings, train_tokens
from tests import builders
from tests.conftest import REPO_ROOT


def test_ldm_single_file_round_trips_every_weight_exactly(tmp_path: Path) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = build_tiny_random_pipeline()
    folder = save_pipeline(pipe, tmp_path / "folder")
    single = save_single_file(pipe, tmp_path / "tiny.safetensors")
    back = StableDiffusionImg2ImgPipeline.from_single_file(
        str(single),
        config=str(folder),
        tokenizer=build_clip_tokenizer(),
        safety_checker=None,
        local_files_only=True,
    )
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}.{key}"


def test_token_training_resumes_bit_identical_after_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from spurge.augment import textual_inversion as ti

    tiles = builders.make_small_tiles(tmp_path / "tiles")
    config = builders.tiny_config()
    settings = TokenSettings(steps=5, batch_size=2)
    whole = train_tokens(tiles, config, tmp_path / "whole", settings=settings, device="cpu",
                         progress=False, checkpoint_every=2)  # fmt: skip

    real_step = ti.TokenTrainer.step

    def dies_at_step_4(self):
        if self.step_index == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(ti.TokenTrainer, "step", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_tokens(tiles, config, tmp_path / "cut", settings=settings, device="cpu",
                     progress=False, checkpoint_every=2)  # fmt: skip
    first = config.class_names[0]
    partial = ti.checkpoint_path(ti.token_path(tmp_path / "cut" / "tokens", first))
    assert partial.is_file()
    assert torch.load(str(partial), weights_only=True)["state"]["step"] == 2
    monkeypatch.setattr(ti.TokenTrainer, "step", real_step)
    resumed_steps: list[int] = []
    monkeypatch.setattr(
        ti.TokenTrainer, "load_state",
        lambda self, s, real=ti.TokenTrainer.load_state: (resumed_steps.append(s["step"]),
                                                          real(self, s)),
    )  # fmt: skip
    cut = train_tokens(tiles, config, tmp_path / "cut", settings=settings, device="cpu",
                       progress=False, checkpoint_every=2)  # fmt: skip
    assert resumed_steps == [2]
    assert not partial.exists()
    for name in config.class_names:
        a = load_file(str(whole.tokens[name].path))
        b = load_file(str(cut.tokens[name].path))
        token = config.token(name)
        assert torch.equal(a[token], b[token]), name


def test_gpu_check_modules_import_without_the_geospatial_stack() -> None:
    """benchmarks/gpu_augment_check.py runs where only torch/diffusers/transformers exist."""
    code = (
        "import sys\n"
        "for m in ('pydantic', 'geopandas', 'rasterio', 'open_clip', 'pandas', 'shapely'):\n"
        "    sys.modules[m] = None\n"
        "import spurge.augment.models, spurge.augment.generate\n"
        "import spurge.augment.textual_inversion, spurge.augment.realsize\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Real size (slow): build once, save three ways, load each
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realsize_forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from spurge.augment.realsize import build_sd15_pipeline, save_diffusers_folder, save_hub_cache

    root = tmp_path_factory.mktemp("sd15")
    # float16 on disk: half the size, and it exercises the fp16-only -> float32 upcast on CPU.
    pipe = build_sd15_pipeline(dtype=torch.float16)
    forms = {
        "folder": save_diffusers_folder(pipe, root / "sd15-folder"),
        "single": save_single_file(pipe, root / "sd15.safetensors"),
        "hub": save_hub_cache(pipe, root / "hub", "spurge-test/sd15-random"),
    }
    del pipe
    return forms


def _one_image(loaded, tile: Path) -> np.ndarray:
    loaded.sample_size = 64
    item = PlanItem("i", "x.png", "present", "t", str(tile), (64, 64), "real-guidance",
                    "a drone photo of leafy spurge", None, 1.0, 7, 1, 7.5, None)  # fmt: skip
    return BatchSampler(loaded, batch_size=1).generate([item])[0]


#: Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE/HF_HUB_CACHE at import.
HUB_LOAD = """
import sys
from spurge.augment.models import RANDOM_WEIGHTS_NOTE, load_model
loaded = load_model(sys.argv[1], device="cpu")
assert loaded.model_id == sys.argv[1], loaded.model_id
assert RANDOM_WEIGHTS_NOTE in loaded.notes, loaded.notes
print(sum(p.numel() for p in loaded.pipe.unet.parameters()))
"""


def _load_from_hub_cache(cache: Path, repo_id: str) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", HUB_LOAD, repo_id], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_hub_cache_loads_offline_by_repo_id(tmp_path: Path) -> None:
    from spurge.augment.realsize import save_hub_cache

    pipe = build_tiny_random_pipeline()
    save_hub_cache(pipe, tmp_path / "hub", "spurge-test/tiny")
    params = _load_from_hub_cache(tmp_path / "hub", "spurge-test/tiny")
    assert params == sum(p.numel() for p in pipe.unet.parameters())


@pytest.mark.slow
def test_real_size_sd15_loads_from_the_hub_cache_offline(realsize_forms) -> None:
    params = _load_from_hub_cache(realsize_forms["hub"].parents[2], "spurge-test/sd15-random")
    assert params > 850e6


@pytest.mark.slow
@pytest.mark.parametrize("form", ["folder", "single"])
def test_real_size_sd15_loads_from_each_form_offline(
    form: str, realsize_forms: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(str(realsize_forms[form]), device="cpu")
    assert loaded.dtype == torch.float32
    assert loaded.pipe.unet.dtype == torch.float32
    assert sum(p.numel() for p in loaded.pipe.unet.parameters()) > 850e6
    assert loaded.pipe.text_encoder.config.hidden_size == 768
    assert RANDOM_WEIGHTS_NOTE in loaded.notes and loaded.random_weights
    if form == "single":
        assert any("upcast to float32" in n for n in loaded.notes)
    tile = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tile)
    image = _one_image(loaded, tile)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_fp16_only_folder_loads_upcast_on_cpu_and_says_so(tmp_path: Path) -> None:
    pipe = build_tiny_random_pipeline().to(torch.float16)
    pipe.save_pretrained(tmp_path / "half", variant="fp16")
    weights = sorted(p.name for p in (tmp_path / "half" / "unet").glob("*.safetensors"))
    assert weights == ["diffusion_pytorch_model.fp16.safetensors"]
    loaded = load_model(str(tmp_path / "half"), device="cpu")
    assert loaded.pipe.unet.dtype == torch.float32
    assert any("fp16 weights only; upcast to float32" in n for n in loaded.notes)
    assert not loaded.random_weights  # not built by realsize: no random-weights claim
    want = pipe.unet.state_dict()["conv_in.weight"].float()
    assert torch.equal(loaded.pipe.unet.state_dict()["conv_in.weight"], want)
