"""How ``--config`` finds a file: a path, ./configs/NAME.yaml, then the configs in the package."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import spurge
from spurge.cli import cli
from spurge.config import CONFIG_DIR, load_config, resolve_config_path, shipped_config_names
from spurge.errors import ConfigError


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_named_configs_ship_inside_the_package() -> None:
    assert Path(spurge.__file__).resolve().parent / "resources" / "configs" == CONFIG_DIR
    assert shipped_config_names() == ["leafy_spurge", "spotted_knapweed"]
    assert resolve_config_path("spotted_knapweed") == CONFIG_DIR / "spotted_knapweed.yaml"


def test_a_folder_named_like_the_config_does_not_hide_it(workdir: Path) -> None:
    """Issue 14 item 15: ./leafy_spurge/ (say, a survey folder) is not the config."""
    (workdir / "leafy_spurge").mkdir()
    assert resolve_config_path("leafy_spurge") == CONFIG_DIR / "leafy_spurge.yaml"
    assert load_config("leafy_spurge").species == "leafy spurge"
    # The default --config goes through the same lookup.
    result = CliRunner().invoke(cli, ["synth", "--out", "o", "--sites", "1", "--size-px", "64"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --size-px: 64 px is too small for nine 7.0 m plots")


def test_a_local_configs_folder_wins_over_the_shipped_config(workdir: Path) -> None:
    values = yaml.safe_load((CONFIG_DIR / "leafy_spurge.yaml").read_text())
    values["species"] = "leafy spurge, local edit"
    (workdir / "configs").mkdir()
    (workdir / "configs" / "leafy_spurge.yaml").write_text(yaml.safe_dump(values))
    assert load_config("leafy_spurge").species == "leafy spurge, local edit"
    assert resolve_config_path("leafy_spurge") == Path("configs/leafy_spurge.yaml")


def test_an_existing_file_is_read_as_it_is(workdir: Path) -> None:
    values = yaml.safe_load((CONFIG_DIR / "spotted_knapweed.yaml").read_text())
    (workdir / "leafy_spurge").write_text(yaml.safe_dump(values))  # a file, not a folder
    assert load_config("leafy_spurge").species == values["species"]


def test_unknown_names_and_paths_say_where_they_were_looked_for(workdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("tansy")
    assert str(info.value) == (
        "tansy: config not found: not a file, no configs/tansy.yaml, and not one of the configs "
        "shipped with spurge (leafy_spurge, spotted_knapweed)"
    )
    (workdir / "sub").mkdir()
    for path in ("sub/leafy_spurge", "leafy_spurge.yaml"):  # paths, not names: no lookup
        with pytest.raises(ConfigError, match=r"^[^:]+: config file not found$"):
            load_config(path)
    with pytest.raises(ConfigError, match="sub: config not found: not a file, no configs/sub"):
        load_config("sub")  # a bare name that is a folder is looked up, and is not there
