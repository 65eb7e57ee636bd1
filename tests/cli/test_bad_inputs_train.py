# ruff: noqa: F811  (world is the matrix fixture, imported from test_bad_inputs)
"""Bad inputs of `train`, `evaluate` and the model card `map` loads (issue 14, items 10, 18).

Reuses the matrix's inputs and checks from ``tests/cli/test_bad_inputs.py``: one line, exit 1,
no traceback, inputs' sha256 unchanged, nothing under a final output name.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import spurge.mapping.predict
import spurge.train.run
from spurge.train import TrainingWarning
from tests import builders
from tests.cli.test_bad_inputs import (  # noqa: F401  (world is a fixture)
    World,
    assert_nothing_written,
    assert_one_line_error,
    checksums,
    invoke,
    world,
)


def _card_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(run_dir: Path) -> None:
        card = json.loads((run_dir / "model.json").read_text())
        edit(card)
        (run_dir / "model.json").write_text(json.dumps(card))

    return apply


def _bands(card: dict) -> None:
    card["config"]["bands"] = [1, 2]


def _positive(card: dict) -> None:
    card["positive_class"] = "thistle"


def _tile_size_m(card: dict) -> None:
    card["tile_size_m"] = card["tile_size_m"] * 10


def _truncated_weights(run_dir: Path) -> None:
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _card_edit(lambda card: card.update(weights_sha256=""))(run_dir)


#: id -> (how the valid run folder is damaged, the words the one-line error must contain)
BAD_CARDS = {
    "bands-of-wrong-length": (_card_edit(_bands), ["model.json", "config.bands"]),
    "positive-class-not-a-class": (_card_edit(_positive), ["model.json", "positive_class"]),
    "tile-size-m-not-px-times-gsd": (_card_edit(_tile_size_m), ["model.json", "tile_size_m"]),
    "truncated-weights-without-checksum": (
        _truncated_weights,
        ["model.safetensors", "truncated"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CARDS))
def test_bad_model_card_fails_at_load_before_any_window_is_read(
    case: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damage, words = BAD_CARDS[case]
    run_dir = tmp_path / "model"
    shutil.copytree(world.model, run_dir)
    damage(run_dir)
    reads: list[object] = []
    original = spurge.mapping.predict.read_window_rgb8
    monkeypatch.setattr(
        spurge.mapping.predict,
        "read_window_rgb8",
        lambda *a, **k: reads.append(a) or original(*a, **k),
    )
    before = checksums([world.root, run_dir])
    out = tmp_path / "out"
    result = invoke("map", str(world.orthos["rgb"]), "--model", str(run_dir), "--out", str(out))
    for word in words:
        assert_one_line_error(result, word)
    assert reads == []  # refused at load, before any map computation
    assert_nothing_written(out)
    assert checksums([world.root, run_dir]) == before


def test_train_without_val_tiles_prints_no_raw_python_warning(tmp_path: Path) -> None:
    """`tile --val-fraction 0` leaves no val split; `train` says so in its summary only."""
    config_file = tmp_path / "tiny.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(builders.tiny_config().model_dump(mode="json")))
    tiles = builders.make_site_tiles(tmp_path / "tiles", splits=("train", "train", "test"))
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        result = invoke("train", str(tiles), "--config", str(config_file), "--backbone",
                        "random-small", "--steps", "2", "--shots", "2",
                        "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.exit_code == 0, result.output
    # A warning reaching the interpreter would print as "...: TrainingWarning: no val tiles".
    assert [w for w in leaked if issubclass(w.category, TrainingWarning)] == []
    assert "TrainingWarning" not in result.output
    assert "Warning: no val tiles: the last step is kept" in result.output


def test_ctrl_c_in_train_says_the_run_starts_over(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(spurge.train.run, "fit", interrupted)
    out = tmp_path / "run"
    result = invoke("train", str(world.tiles["train"]), "--config", str(world.config),
                    "--backbone", "random-small", "--steps", "1", "--out", str(out))  # fmt: skip
    assert result.exit_code == 130, result.output
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: interrupted; training is not resumable: re-running the same command "
        "starts this run over from step 0"
    ]
    assert_nothing_written(out)
