"""`spurge evaluate`: every method x shots x seed, resumable, results.csv + plot + summary."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from spurge.cli import cli
from spurge.errors import ManifestError, ModelError, SpurgeError
from spurge.evaluate import (
    EvaluateResult,
    aggregate,
    best_per_shots,
    evaluate,
    mean_ci95,
    parse_list,
    summary_markdown,
)
from spurge.train import TrainSettings
from tests.builders import make_site_tiles as make_tiles
from tests.builders import make_synthetic_store, tiny_config
from tests.train.test_train import heldout_scores

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

    def run_all() -> EvaluateResult:
        return evaluate(
            tiles_dir,
            tiny_config(),
            out,
            synthetic_root=root,
            methods=["none", "randaugment", "da-fusion"],
            shots=[1, 2],
            seeds=[0, 1],
            settings=FAST,
        )

    result = run_all()
    assert result.trained == 12 and result.skipped == 0
    runs = pd.read_csv(out / "results.csv")
    assert len(runs) == 12
    assert set(runs["method"]) == {"none", "randaugment", "da-fusion"}
    assert (runs.loc[runs["method"] == "da-fusion", "n_synthetic"] > 0).all()
    assert (runs.loc[runs["method"] != "da-fusion", "n_synthetic"] == 0).all()
    # Every row is what that run's saved model scores on the test tiles, recomputed here.
    for row in runs.itertuples():
        accuracy, balanced = heldout_scores(out / row.run_dir, tiles_dir)
        assert row.test_accuracy == pytest.approx(accuracy, abs=5e-7)  # csv keeps 6 decimals
        assert row.test_balanced_accuracy == pytest.approx(balanced, abs=5e-7)
    # The table is the mean and Student-t 95 % half-width over the two seeds.
    assert len(result.table) == 6 and (result.table["seeds"] == 2).all()
    for row in result.table.itertuples():
        values = runs.loc[
            (runs["method"] == row.method) & (runs["shots"] == row.shots),
            "test_balanced_accuracy",
        ].to_numpy()
        assert row.test_bacc_mean == pytest.approx(values.mean(), abs=1e-6)
        half = 12.706205 * values.std(ddof=1) / np.sqrt(2)  # t(0.975, 1)
        assert row.test_bacc_ci95 == pytest.approx(half, abs=1e-5)
    with Image.open(out / "accuracy_vs_shots.png") as plot:
        assert plot.format == "PNG" and plot.size == (600, 400)
    summary = (out / "summary.md").read_text()
    assert "| da-fusion |" in summary and "2 shots" in summary
    assert "n/a" not in summary  # two seeds: real intervals
    # Re-running skips finished runs and gives the same table.
    again = run_all()
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
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert "± n/a (1 seed)" in summary and "± 0.000" not in summary
    bad = CliRunner().invoke(
        cli, [*args[:-2], "--methods", "da-fusion", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 1 and bad.output.startswith("error: ")


def _table(rows: list[tuple[str, int, list[float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame(
        [
            {"method": m, "shots": k, "seed": s, "test_balanced_accuracy": v, "test_accuracy": v}
            for m, k, values in rows
            for s, v in enumerate(values)
        ]
    )
    return runs, aggregate(runs)


def test_one_seed_has_no_interval_and_exact_ties_are_ties():
    runs, table = _table([("none", 2, [0.75]), ("da-fusion", 2, [0.75]), ("none", 4, [0.875])])
    runs.loc[len(runs)] = ["da-fusion", 4, 0, 0.8125, 0.8125]
    table = aggregate(runs)
    summary = summary_markdown(table, runs, TrainSettings(backbone="random-small", steps=6))
    assert "| none | 0.750 ± n/a (1 seed) | 0.875 ± n/a (1 seed) |" in summary
    assert "± 0.000" not in summary
    assert "Best per shot count: 2: **tie (none, da-fusion)**; 4: **none**." in summary
    result = EvaluateResult(Path("/x"), runs, table, 4, 0)
    assert "2 shots: tie (none, da-fusion) (0.750), 4 shots: none (0.875)" in result.summary()


def test_a_near_tie_names_the_better_method():
    runs, table = _table([("none", 2, [0.5, 0.75]), ("da-fusion", 2, [0.625, 0.6875])])
    assert [name for _, name in best_per_shots(table)] == ["da-fusion"]  # 0.65625 > 0.625
    summary = summary_markdown(table, runs, TrainSettings())
    assert "| none | 0.625 ± 1.588 |" in summary  # t(0.975, 1) * 0.1768 / sqrt(2)
