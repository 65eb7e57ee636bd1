"""`spurge evaluate`: every method x shots x seed, resumable, results.csv + plot + summary."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from spurge.cli import cli
from spurge.errors import ManifestError, ModelError, SpurgeError
from spurge.evaluate import evaluate, mean_ci95, parse_list
from spurge.train import TrainSettings
from tests.builders import make_site_tiles as make_tiles
from tests.builders import make_synthetic_store, tiny_config

FAST = TrainSettings(backbone="random-small", steps=6, batch_size=8, eval_every=3, progress=False)


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    return make_tiles(tmp_path_factory.mktemp("tiles"))


def test_mean_ci95_and_parse_list():
    mean, half = mean_ci95([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    mean_one, half_one = mean_ci95([0.7])
    assert mean_one == 0.7 and np.isnan(half_one)  # one seed: no interval
    assert parse_list("1, 2,4,2", int) == [1, 2, 4]
    with pytest.raises(SpurgeError, match="--shots"):
        parse_list("1,two", int, "shots")


def test_every_combination_then_resume(tiles_dir, tmp_path):
    root = tmp_path / "syn"
    make_synthetic_store(root / "da-fusion", tiles_dir, per_tile=1)
    out = tmp_path / "eval"
    result = evaluate(
        tiles_dir,
        tiny_config(),
        out,
        synthetic_root=root,
        methods=["none", "randaugment", "da-fusion"],
        shots=[1, 2],
        seeds=[0, 1],
        settings=FAST,
    )
    assert result.trained == 12 and result.skipped == 0
    runs = pd.read_csv(out / "results.csv")
    assert len(runs) == 12
    assert set(runs["method"]) == {"none", "randaugment", "da-fusion"}
    assert (runs.loc[runs["method"] == "da-fusion", "n_synthetic"] > 0).all()
    assert (runs.loc[runs["method"] != "da-fusion", "n_synthetic"] == 0).all()
    assert runs["test_balanced_accuracy"].between(0, 1).all()
    assert (out / "accuracy_vs_shots.png").read_bytes()[:4] == b"\x89PNG"
    summary = (out / "summary.md").read_text()
    assert "| da-fusion |" in summary and "2 shots" in summary
    assert len(result.table) == 6 and (result.table["seeds"] == 2).all()
    # Re-running skips finished runs and gives the same table.
    again = evaluate(
        tiles_dir,
        tiny_config(),
        out,
        synthetic_root=root,
        methods=["none", "randaugment", "da-fusion"],
        shots=[1, 2],
        seeds=[0, 1],
        settings=FAST,
    )
    assert again.trained == 0 and again.skipped == 12
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), runs)
    # A half-finished run (no metrics.json) is redone.
    (out / "runs/none/shots_1/seed_0/metrics.json").unlink()
    third = evaluate(
        tiles_dir,
        tiny_config(),
        out,
        synthetic_root=root,
        methods=["none"],
        shots=[1],
        seeds=[0],
        settings=FAST,
    )
    assert third.trained == 1
    # A finished run whose model.json was damaged is reported, not silently reused.
    (out / "runs/none/shots_1/seed_1/model.json").write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        evaluate(
            tiles_dir,
            tiny_config(),
            out,
            methods=["none"],
            shots=[1],
            seeds=[1],
            settings=FAST,
        )
    # Other settings into the same folder are refused rather than mixed.
    with pytest.raises(SpurgeError, match="other train_settings"):
        evaluate(
            tiles_dir,
            tiny_config(),
            out,
            methods=["none"],
            shots=[1],
            seeds=[0],
            settings=replace(FAST, steps=7),
        )


def test_bad_inputs_fail_before_any_run(tiles_dir, tmp_path):
    config = tiny_config()
    with pytest.raises(ManifestError, match="no synthetic store for method 'da-fusion'"):
        evaluate(
            tiles_dir,
            config,
            tmp_path / "a",
            synthetic_root=tmp_path,
            methods=["none", "da-fusion"],
            shots=[1],
            seeds=[0],
            settings=FAST,
        )
    with pytest.raises(SpurgeError, match="needs --synthetic-root"):
        evaluate(
            tiles_dir,
            config,
            tmp_path / "b",
            methods=["real-guidance"],
            shots=[1],
            seeds=[0],
            settings=FAST,
        )
    with pytest.raises(ManifestError, match="--shots 64 needs 64 train tiles"):
        evaluate(
            tiles_dir,
            config,
            tmp_path / "c",
            methods=["none"],
            shots=[1, 64],
            seeds=[0],
            settings=FAST,
        )
    no_test = make_tiles(tmp_path / "notest", splits=("train", "val"))
    with pytest.raises(ManifestError, match="no test tiles"):
        evaluate(
            no_test, config, tmp_path / "d", methods=["none"], shots=[1], seeds=[0], settings=FAST
        )
    assert not (tmp_path / "a" / "runs").exists()


def test_cli_evaluate(tiles_dir, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    args = [
        "evaluate",
        str(tiles_dir),
        "--config",
        str(config_file),
        "--methods",
        "none,randaugment",
        "--shots",
        "1,2",
        "--seeds",
        "0",
        "--backbone",
        "random-small",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "eval"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "= 4 runs (4 trained, 0 already finished)" in result.output
    bad = CliRunner().invoke(
        cli, [*args[:-2], "--methods", "da-fusion", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and bad.output.startswith("error: ")
