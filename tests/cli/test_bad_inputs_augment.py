"""Bad Stable Diffusion checkpoints and GPU out-of-memory through `spurge augment`.

Each bad input ends in one ``error: <file>: <problem>`` line, exit 1, inputs unchanged and
nothing written (helpers from tests/cli/test_bad_inputs.py). The files here hold tiny tensors
under SD 1.x's key names: the checks run on names and shapes before any weight is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from spurge.augment.generate import BatchSampler, GenerationSettings, plan_images
from spurge.augment.models import load_model
from spurge.augment.single_file import expected_sd1_shapes
from spurge.augment.textual_inversion import labelled_train_tiles
from spurge.errors import ModelError
from tests import builders
from tests.cli.test_bad_inputs import (
    assert_nothing_written,
    assert_one_line_error,
    checksums,
    invoke,
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd_inputs")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(builders.tiny_config().model_dump(mode="json")))
    tiles = builders.make_small_tiles(root / "tiles")
    expected = sorted(expected_sd1_shapes())
    one = torch.zeros(1)
    files = {
        # SDXL: a second text encoder under conditioner.embedders.
        "sdxl": {
            "model.diffusion_model.input_blocks.0.0.weight": one,
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": one,
        },
        "not_sd": {"encoder.layer.0.weight": one, "decoder.weight": one},
        # Every SD 1.x name but three, as a truncated conversion leaves.
        "missing": {k: one for k in expected[3:]},
        # Every name present, none with SD 1.x's shape (another architecture's weights).
        "wrong_shapes": {k: one for k in expected},
    }
    out = {"config": config, "tiles": tiles}
    for name, state in files.items():
        path = root / f"{name}.safetensors"
        save_file({k: v.clone() for k, v in state.items()}, str(path))
        out[name] = path
    return out


CASES = [
    ("sdxl", "SDXL checkpoint"),
    ("not_sd", "not a Stable Diffusion 1.x/2.x checkpoint"),
    ("missing", "missing 3 of 1130 SD 1.x weights"),
    ("wrong_shapes", "shapes of another architecture"),
]


@pytest.mark.parametrize(("name", "problem"), CASES, ids=[c[0] for c in CASES])
def test_bad_single_file_is_one_line_naming_the_file(
    name: str, problem: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    model = inputs[name]
    before = checksums([model, inputs["tiles"], inputs["config"]])
    out = tmp_path / "out"
    result = invoke(
        "augment", str(inputs["tiles"]), "--config", str(inputs["config"]), "--model",
        str(model), "--per-tile", "1", "--steps", "1", "--strengths", "1.0",
        "--token-steps", "1", "--out", str(out),
    )  # fmt: skip
    assert_one_line_error(result, problem)
    assert str(model) in result.output
    assert_nothing_written(out)
    assert checksums([model, inputs["tiles"], inputs["config"]]) == before


# ---------------------------------------------------------------------------------------------
# GPU out of memory (faked: the retry logic is device-independent)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan(inputs: dict[str, Path]):
    config = builders.tiny_config()
    rows = labelled_train_tiles(inputs["tiles"], config)
    settings = GenerationSettings(method="real-guidance", per_tile=2, steps=2, strengths=(1.0,))
    return plan_images(inputs["tiles"], rows, config, settings, "h", None)


def _oom_above(limit: int, calls: list[int]):
    real = BatchSampler.generate_batch

    def fake(self, items):
        calls.append(len(items))
        if len(items) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, items)

    return fake


def test_auto_batch_halves_after_out_of_memory_and_keeps_every_image(
    plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny-random", device="cpu")
    expected = BatchSampler(loaded, batch_size=1).generate(plan)
    calls: list[int] = []
    monkeypatch.setattr(BatchSampler, "generate_batch", _oom_above(2, calls))
    sampler = BatchSampler(loaded)  # automatic: 4 on CPU
    assert sampler.batch_size == 4 and len(plan) == 8
    images = sampler.generate(plan)
    # 4 fails, then 2, 2, 2, 2 (the halved size sticks for later chunks).
    assert calls == [4, 2, 2, 2, 2]
    assert sampler.batch_size == 2 and sampler.stats.oom_retries == 1
    assert len(images) == len(plan)
    for got, want in zip(images, expected, strict=True):
        assert got.shape == want.shape
        # Per-item seeds: batching changes only float rounding, not the image.
        assert abs(got.astype(int) - want.astype(int)).max() <= 2


def test_explicit_batch_out_of_memory_suggests_a_smaller_batch(
    plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny-random", device="cpu")
    monkeypatch.setattr(BatchSampler, "generate_batch", _oom_above(2, []))
    with pytest.raises(ModelError) as info:
        BatchSampler(loaded, batch_size=4).generate(plan)
    message = str(info.value)
    assert "out of memory at batch size 4" in message
    assert "--batch-size (e.g. 2)" in message
    assert "\n" not in message


def test_other_errors_are_not_mistaken_for_out_of_memory(
    plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("tiny-random", device="cpu")

    def broken(self, items):
        raise RuntimeError("expected scalar type Half but found Float")

    monkeypatch.setattr(BatchSampler, "generate_batch", broken)
    sampler = BatchSampler(loaded)
    with pytest.raises(RuntimeError, match="scalar type"):
        sampler.generate(plan)
    assert sampler.batch_size == 4
