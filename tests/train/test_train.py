"""`spurge train`: few-shot sampling, synthetic mixing, learning, frozen backbone, determinism."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from spurge.classifier import BACKBONES, BackboneSpec, load_model, predict_proba, register_backbone
from spurge.cli import cli
from spurge.errors import ManifestError
from spurge.train import (
    FeatureCache,
    TrainingWarning,
    TrainSettings,
    classification_metrics,
    load_labelled_tiles,
    sample_few_shot,
    train,
)
from tests.builders import make_site_tiles as make_tiles
from tests.builders import make_synthetic_store, tiny_config

FAST = {
    "backbone": "random-small",
    "steps": 30,
    "batch_size": 16,
    "eval_every": 10,
    "progress": False,
}


def fast(**overrides: object) -> TrainSettings:
    """Quick settings for the tiny random-small backbone; ``overrides`` replace any field."""
    return TrainSettings(**{**FAST, **overrides})


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return make_tiles(tmp_path_factory.mktemp("tiles"))


@pytest.fixture()
def config():
    return tiny_config()


def test_few_shot_keeps_plot_quarters_together(tiles_dir, config):
    tiles = load_labelled_tiles(tiles_dir, config)
    few = sample_few_shot(tiles, config, shots=4, seed=3)
    assert len(few) == 8
    assert (few["split"] == "train").all()
    for label in config.class_names:
        assert few.loc[few["label"] == label, "plot_id"].nunique() == 1
    five = sample_few_shot(tiles, config, shots=5, seed=3)
    assert five.groupby("label")["plot_id"].nunique().tolist() == [2, 2]
    # Seeded: same seed same tiles, another seed (usually) others.
    assert sample_few_shot(tiles, config, 4, 3)["tile_id"].tolist() == few["tile_id"].tolist()
    others = {tuple(sample_few_shot(tiles, config, 4, s)["tile_id"]) for s in range(6)}
    assert len(others) > 1


def test_too_few_tiles_for_shots_is_an_error(tiles_dir, config, tmp_path):
    # 2 train sites x 3 plots x 4 quarters = 24 train tiles per class.
    with pytest.raises(ManifestError, match="fewer than --shots 25"):
        train(tiles_dir, config, tmp_path / "run", fast(shots=25))


def test_metrics_by_hand():
    m = classification_metrics([0, 0, 0, 1], [0, 0, 1, 1], ["absent", "present"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert m["per_class"]["present"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["present"]["f1"] == pytest.approx(2 / 3)


def heldout_scores(run_dir, tiles_dir) -> tuple[float, float]:
    """(accuracy, balanced accuracy) on the test split, recomputed here from the saved model
    through the map's entry points (load_model, predict_proba) and numpy, not train's code.
    """
    import pandas as pd
    from PIL import Image

    model, card = load_model(run_dir)
    tiles = pd.read_parquet(tiles_dir / "tiles.parquet")
    test = tiles[tiles["split"] == "test"]
    images = np.stack([np.array(Image.open(tiles_dir / p).convert("RGB")) for p in test["path"]])
    predicted = predict_proba(model, card, images).argmax(1)
    truth = np.array([card.class_names.index(label) for label in test["label"]])
    recalls = [(predicted[truth == c] == c).mean() for c in np.unique(truth)]
    return float((predicted == truth).mean()), float(np.mean(recalls))


def test_learns_easy_tiles_and_writes_a_full_run(tiles_dir, config, tmp_path):
    run = tmp_path / "run"
    result = train(tiles_dir, config, run, fast(shots=8, seed=0, mode="finetune", steps=40))
    # Real learning: held-out site well above chance (0.5).
    assert result.test["n"] == 24
    assert result.test["balanced_accuracy"] >= 0.8
    # The reported figures are exactly what the saved model scores on the test tiles.
    accuracy, balanced = heldout_scores(run, tiles_dir)
    assert (result.test["accuracy"], result.test["balanced_accuracy"]) == (accuracy, balanced)
    assert sum(map(sum, result.test["confusion_matrix"])) == 24
    assert {p.name for p in run.iterdir()} >= {
        "model.safetensors",
        "model.json",
        "metrics.json",
        "training_curve.png",
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) >= {
        "accuracy",
        "balanced_accuracy",
        "per_class",
        "confusion_matrix",
    }
    assert metrics["val"]["n"] == 24 and metrics["n_train"] == 16
    card = json.loads((run / "model.json").read_text())
    assert card["tile_size_m"] == pytest.approx(32 * 0.05)
    assert card["config"]["species"] == "leafy spurge"
    assert card["data_hashes"]["config_fingerprint"] == config.fingerprint()
    assert len(card["data_hashes"]["tiles_manifest_sha256"]) == 64
    assert card["training"]["shots"] == 8 and card["mode"] == "finetune"
    # The run loads through the map stage's entry points and predicts like training did.
    model, loaded = load_model(run)
    assert loaded.class_names == ["absent", "present"]
    from tests.builders import toy_tile

    rng = np.random.default_rng(9)
    images = np.stack([toy_tile("present", rng), toy_tile("absent", rng)])
    proba = predict_proba(model, loaded, images)
    assert proba.shape == (2, 2)
    assert proba[0, 1] > proba[1, 1]
    assert "Held-out test (24 tiles" in result.summary()


def test_same_seed_same_bytes_other_seed_other_model(tiles_dir, config, tmp_path):
    a = train(tiles_dir, config, tmp_path / "a", fast(shots=4, seed=1))
    b = train(tiles_dir, config, tmp_path / "b", fast(shots=4, seed=1))
    c = train(tiles_dir, config, tmp_path / "c", fast(shots=4, seed=2))
    assert (tmp_path / "a/model.safetensors").read_bytes() == (
        tmp_path / "b/model.safetensors"
    ).read_bytes()
    assert a.card.weights_sha256 == b.card.weights_sha256 != c.card.weights_sha256
    assert a.metrics["test"] == b.metrics["test"]
    assert (tmp_path / "a/metrics.json").read_bytes() == (tmp_path / "b/metrics.json").read_bytes()


def test_frozen_mode_leaves_backbone_unchanged(tiles_dir, config, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}

    @register_backbone("probe-frozen")
    def _probe(pretrained: bool) -> BackboneSpec:
        return BackboneSpec(module, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)

    try:
        train(
            tiles_dir,
            config,
            tmp_path / "run",
            fast(shots=4, seed=0, mode="linear", backbone="probe-frozen"),
        )
        after = module.state_dict()
        for name, tensor in before.items():  # weights and BatchNorm running statistics
            assert torch.equal(tensor, after[name]), name
        from safetensors.torch import load_file

        saved = load_file(str(tmp_path / "run/model.safetensors"))
        assert torch.equal(saved["backbone.0.weight"], before["0.weight"])
        head_init = nn.Linear(8, 2)
        assert saved["head.weight"].shape == head_init.weight.shape
    finally:
        BACKBONES.pop("probe-frozen", None)


def test_synthetic_mixing_uses_only_few_shot_tiles(tiles_dir, config, tmp_path):
    store = make_synthetic_store(tmp_path / "syn", tiles_dir, per_tile=2)
    result = train(
        tiles_dir,
        config,
        tmp_path / "run",
        fast(shots=4, seed=0, randaugment=True),
        synthetic_dir=store,
    )
    assert result.n_train == 8
    assert result.n_synthetic == 16  # 2 per sampled tile, none of the other train tiles
    assert "synthetic_manifest_sha256" in result.card.data_hashes
    assert "mixed with 16 synthetic images at p=0.5" in result.summary()


def test_synthetic_store_from_other_tiles_or_config_is_refused(tiles_dir, config, tmp_path):
    other_tiles = make_tiles(tmp_path / "other", splits=("train",), seed=5)
    # Same ids would match: rename them so they are foreign.
    import geopandas as gpd

    manifest = gpd.read_parquet(other_tiles / "tiles.parquet")
    manifest["tile_id"] = "x_" + manifest["tile_id"]
    manifest.to_parquet(other_tiles / "tiles.parquet")
    foreign = make_synthetic_store(tmp_path / "foreign", other_tiles, per_tile=1)
    with pytest.raises(ManifestError, match="built from other tiles"):
        train(tiles_dir, config, tmp_path / "r1", fast(shots=4), synthetic_dir=foreign)
    wrong_config = make_synthetic_store(
        tmp_path / "cfg",
        tiles_dir,
        per_tile=1,
        config_fingerprint="0123456789abcdef",
    )
    with pytest.raises(ManifestError, match="another species config"):
        train(tiles_dir, config, tmp_path / "r2", fast(shots=4), synthetic_dir=wrong_config)
    with pytest.raises(ManifestError, match="no synthetic manifest"):
        train(tiles_dir, config, tmp_path / "r3", fast(shots=4), synthetic_dir=tmp_path)


def test_no_test_tiles_warns_and_reports_no_test(config, tmp_path):
    tiles = make_tiles(tmp_path / "tiles", splits=("train", "val"))
    with pytest.warns(TrainingWarning, match="no test tiles"):
        result = train(tiles, config, tmp_path / "run", fast(shots=4))
    assert result.test is None
    assert json.loads((tmp_path / "run/metrics.json").read_text())["test"] is None
    assert "no test tiles" in result.summary()


def test_cli_train_and_one_line_errors(tiles_dir, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    runner = CliRunner()
    args = [
        "train",
        str(tiles_dir),
        "--config",
        str(config_file),
        "--shots",
        "4",
        "--seed",
        "0",
        "--backbone",
        "random-small",
        "--steps",
        "10",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "run"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Held-out test" in result.output
    assert (tmp_path / "run/model.json").is_file()
    bad = runner.invoke(cli, [*args[:5], "99", *args[6:]])
    assert bad.exit_code == 1
    assert bad.output.startswith("error: ") and "fewer than --shots 99" in bad.output
    assert "Traceback" not in bad.output
    missing = runner.invoke(
        cli,
        [
            "train",
            str(tmp_path / "nowhere"),
            "--config",
            str(config_file),
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert missing.exit_code == 1 and "no tile manifest" in missing.output


def test_feature_cache_matches_the_backbone_and_skips_known_keys():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        direct = backbone(x)
    calls = []
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cache = FeatureCache(backbone)
    first = cache(x, [3, 5, 3, -1])  # key 3 twice: computed once; -1 never cached
    assert calls == [3]
    torch.testing.assert_close(first, direct[[0, 1, 0, 3]])
    again = cache(x[[1, 0]], [5, 3])
    assert calls == [3]  # nothing new to compute
    torch.testing.assert_close(again, direct[[1, 0]])


def test_bad_device_and_options_are_one_line_errors(tiles_dir, config, tmp_path):
    from spurge.errors import SpurgeError

    with pytest.raises(SpurgeError, match="unknown device .gpu."):
        train(tiles_dir, config, tmp_path / "r", fast(shots=1, device="gpu"))
    with pytest.raises(SpurgeError, match="synthetic-prob"):
        fast(shots=1, synthetic_prob=1.5)


def test_device_auto_trains_on_the_machine_it_has(tiles_dir, config, tmp_path, monkeypatch):
    """`train --device auto` resolves through the shared resolver (it used to fail)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = train(tiles_dir, config, tmp_path / "auto", fast(shots=1, device="auto"))
    assert (result.run_dir / "metrics.json").is_file()
    assert result.test is not None


def _head_digest(model: torch.nn.Module) -> str:
    import hashlib

    state = model.state_dict()
    return hashlib.sha256(
        b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))
    ).hexdigest()


def test_test_split_is_scored_once_last_with_the_weights_chosen_on_val(
    tiles_dir, config, tmp_path, monkeypatch
):
    """Spy on the evaluator: val is checked during fitting and picks the step; the held-out
    test split is predicted exactly once, after fitting, with that step's weights.
    """
    from spurge.train import SplitEvaluator

    calls: list[tuple[str, str]] = []
    original = SplitEvaluator.predict
    # Val checks at steps 10, 20, 30 score 0.5, 1.0, 0.5: step 20 must be kept, not the last.
    scripted = iter(["chance", "perfect", "chance"])

    def spy(self):
        calls.append((self.name, _head_digest(self.model)))
        predictions = original(self)
        if self.name == "val":
            kind = next(scripted, "real")
            if kind == "chance":
                return [0] * len(self.targets)
            if kind == "perfect":
                return list(self.targets)
        return predictions

    monkeypatch.setattr(SplitEvaluator, "predict", spy)
    result = train(tiles_dir, config, tmp_path / "run", fast(shots=4, steps=30, eval_every=10))
    names = [name for name, _ in calls]
    assert names == ["val", "val", "val", "val", "test"]  # 3 checks, then val, test once
    assert result.metrics["best_step"] == 20
    assert [p["val_balanced_accuracy"] for p in result.metrics["curve"]] == [0.5, 1.0, 0.5]
    step_20_weights = calls[1][1]
    assert calls[2][1] != step_20_weights  # training went on after step 20
    assert calls[-1][1] == step_20_weights  # the test split saw the step-20 weights
    assert calls[-2][1] == step_20_weights
    model, _ = load_model(tmp_path / "run")
    assert _head_digest(model) == step_20_weights  # and so does the saved model
