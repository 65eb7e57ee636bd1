from __future__ import annotations

import pickle
import shlex
from pathlib import Path

import click
import pytest
import rasterio
from click.testing import CliRunner

import tests.builders  # noqa: F401  (registers the test-colour backbone)
from spurge.cli import SpurgeGroup, cli
from spurge.cli_options import LibraryOption
from spurge.config import CONFIG_DIR, load_config
from spurge.errors import ConfigError, SpurgeError, one_line
from spurge.synthetic import synthesize

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
    config = CONFIG_DIR / "leafy_spurge.yaml"
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


# --------------------------------------------------------------------------------------------
# Shared options: defined once, defaults from the library, examples that parse
# --------------------------------------------------------------------------------------------

SHARED_FLAGS = ("--config", "--seed", "--out", "--device")
PACKAGE = Path(__file__).resolve().parents[2] / "spurge"


def _option(command: str, flag: str) -> click.Option | None:
    for param in cli.commands[command].params:
        if isinstance(param, click.Option) and flag in param.opts:
            return param
    return None


@pytest.mark.parametrize("flag", SHARED_FLAGS)
def test_shared_flags_are_defined_once_in_cli_options(flag: str) -> None:
    """cli.py never spells the shared flags itself; cli_options.py defines each exactly once."""
    assert f'"{flag}"' not in (PACKAGE / "cli.py").read_text()
    assert (PACKAGE / "cli_options.py").read_text().count(f'"{flag}"') == 1


def test_shared_options_take_the_library_defaults() -> None:
    from spurge import DEFAULT_SEED
    from spurge.config import DEFAULT_CONFIG
    from spurge.device import DEFAULT_DEVICE

    expected = {"--config": DEFAULT_CONFIG, "--seed": DEFAULT_SEED, "--device": DEFAULT_DEVICE}
    for flag, default in expected.items():
        options = [o for o in (_option(name, flag) for name in cli.commands) if o is not None]
        assert len(options) >= 4, flag  # synth/tile/augment/train/evaluate/demo share them
        assert {o.default for o in options} == {default}, flag
    # --config and --device explain themselves the same way everywhere.
    for flag in ("--config", "--device"):
        endings = {
            o.help.split(". ")[-1] for o in map(lambda n: _option(n, flag), cli.commands) if o
        }
        assert len(endings) == 1, endings


def test_backbone_choices_come_from_the_registry() -> None:
    from spurge.classifier import BACKBONES, DEFAULT_BACKBONE

    for name in ("train", "evaluate"):
        option = _option(name, "--backbone")
        assert list(option.type.choices) == sorted(BACKBONES)
        assert option.get_default(click.Context(cli.commands[name])) == DEFAULT_BACKBONE
    assert "test-colour" in BACKBONES  # registered by tests/builders.py after cli was imported
    assert "random-small|resnet50|test-colour" in run("train", "--help").output.replace(" ", "")
    bad = run("train", "tiles", "--out", "o", "--backbone", "vgg")
    assert bad.exit_code == 2 and "'vgg' is not one of" in bad.output


def test_device_spelling_is_checked_by_the_cli() -> None:
    bad = run("demo", "--device", "gpu")
    assert bad.exit_code == 2
    assert "Invalid value for '--device': 'gpu' is not one of auto, cpu, cuda, mps" in bad.output


def _examples(name: str) -> list[list[str]]:
    text = cli.commands[name].help or ""
    block = text.split("Examples:", 1)[1].split("\n\n")[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("name", [*SUBCOMMANDS, "verify"])
def test_every_command_has_examples_that_parse(name: str) -> None:
    """Each example is `spurge <this command> ...` with options the command really has."""
    examples = _examples(name)
    assert examples, f"{name} --help has no Examples"
    for argv in examples:
        assert argv[0] == name
        parent = click.Context(cli, info_name="spurge")
        cli.commands[name].make_context(name, argv[1:], parent=parent)  # raises on a bad flag
    assert "Examples:" in run(name, "--help").output


# --------------------------------------------------------------------------------------------
# Library errors name their parameter; the CLI shows the flag
# --------------------------------------------------------------------------------------------


def test_library_parameter_becomes_the_flag_in_the_error(tmp_path: Path) -> None:
    result = run("synth", "--out", str(tmp_path / "o"), "--size-px", "100")
    assert result.exit_code == 1
    assert result.output.startswith("error: --size-px: 100 px is too small for nine 7.0 m plots")
    assert result.output.count("\n") == 1
    with pytest.raises(SpurgeError) as info:
        synthesize(tmp_path / "lib", config=load_config("leafy_spurge"), sites=1, size_px=100)
    assert info.value.param == "size_px"
    assert str(info.value).startswith("size_px: 100 px is too small")


def test_missing_device_is_named_by_its_flag(tmp_path: Path) -> None:
    from spurge.device import mps_available

    if mps_available():
        pytest.skip("this machine has Apple MPS")
    result = run("demo", "--out", str(tmp_path / "demo"), "--device", "mps")
    assert result.exit_code == 1
    assert result.output == (
        "error: --device: 'mps' requested but Apple MPS is not available on this machine\n"
    )
    assert not (tmp_path / "demo").exists()  # refused before any stage ran


def test_library_names_map_to_a_differently_spelt_flag() -> None:
    """An option that feeds a library keyword under another name is still found."""

    @click.group(cls=SpurgeGroup)
    def group() -> None:
        pass

    @group.command()
    @click.option("--max-nodata", cls=LibraryOption, library_names=("max_nodata_fraction",))
    @click.option("--kind")
    def cut(max_nodata: str | None, kind: str | None) -> None:
        param = "max_nodata_fraction" if max_nodata else "band_count"
        raise SpurgeError("must be at most 1,\n got 2", "a.yaml", param=param)

    named = CliRunner().invoke(group, ["cut", "--max-nodata", "2"])
    assert named.exit_code == 1
    assert named.output == "error: a.yaml: --max-nodata: must be at most 1, got 2\n"
    unnamed = CliRunner().invoke(group, ["cut"])
    assert unnamed.output == "error: a.yaml: band_count: must be at most 1, got 2\n"


def test_unexpected_errors_are_one_line() -> None:
    assert one_line(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(RuntimeError("x" * 50), limit=10) == "RuntimeError: xxxxxxx..."


def test_errors_keep_file_and_parameter_across_processes() -> None:
    """Dask and DataLoader workers pickle errors; the CLI still needs .path and .param."""
    from spurge.errors import DeviceError

    for error in (
        SpurgeError("bad\n value", "a.tif", param="stride"),
        DeviceError("'cuda' requested but CUDA is not available on this machine"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.problem, copy.path, copy.param) == (error.problem, error.path, error.param)
        assert str(copy) == str(error)
