from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from click.testing import CliRunner

from spurge.cli import cli
from spurge.errors import ConfigError

SUBCOMMANDS = ["synth", "tile", "augment", "train", "evaluate", "map", "demo"]


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def test_help_lists_every_stage() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", [*SUBCOMMANDS, "verify"])
def test_every_subcommand_has_real_help(name: str) -> None:
    result = run(name, "--help")
    assert result.exit_code == 0, result.output
    description = result.output.split("Options:")[0]
    assert len(description.split()) > 8, description


def test_error_is_one_line_with_file_and_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = run("synth", "--out", str(tmp_path / "o"), "--config", str(missing))
    assert result.exit_code == 1
    assert result.output == f"error: {missing}: config file not found\n"
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = run("--debug", "synth", "--out", str(tmp_path), "--config", str(tmp_path / "x"))
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_bad_option_value_is_a_usage_error(tmp_path: Path) -> None:
    result = run("synth", "--out", str(tmp_path), "--sites", "0")
    assert result.exit_code == 2
    assert "Invalid value for '--sites'" in result.output


def test_synth_then_verify_from_cli(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "leafy_spurge.yaml"
    out = tmp_path / "syn"
    result = run(
        "synth",
        "--out",
        str(out),
        "--sites",
        "1",
        "--size-px",
        "2000",
        "--seed",
        "2",
        "--config",
        str(config),
    )
    assert result.exit_code == 0, result.output
    assert "Synthesised 1 site(s)" in result.output
    with rasterio.open(out / "site_000.tif") as src:
        assert src.res == (0.014, 0.014)
    ok = run("verify", str(out / "dataset.yaml"))
    assert ok.exit_code == 0 and "3 file(s) verified" in ok.output
    (out / "plots.gpkg").write_bytes(b"tampered")
    bad = run("verify", str(out / "dataset.yaml"))
    assert bad.exit_code == 1 and "checksum mismatch: plots.gpkg" in bad.output


def test_verify_record_pins_checksums(tmp_path: Path) -> None:
    data = tmp_path / "download"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"one")
    (data / "b.txt").write_bytes(b"two")
    manifest = tmp_path / "set.yaml"
    manifest.write_text("name: s\nsource: here\nlicence: CC0-1.0\nfiles: []\n")
    first = run("verify", str(manifest), "--root", str(data), "--record")
    assert first.exit_code == 0 and "recorded 2 new checksum(s)" in first.output
    (data / "b.txt").write_bytes(b"changed")
    second = run("verify", str(manifest), "--root", str(data))
    assert second.exit_code == 1 and "checksum mismatch: b.txt" in second.output
