from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spurge.config import CONFIG_DIR, load_config
from spurge.errors import ConfigError


def write_yaml(tmp_path: Path, data: object, name: str = "species.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def leafy_dict() -> dict:
    return yaml.safe_load((CONFIG_DIR / "leafy_spurge.yaml").read_text())


def test_shipped_configs_load() -> None:
    leafy = load_config(CONFIG_DIR / "leafy_spurge.yaml")
    assert leafy.class_names == ["absent", "present"]
    assert leafy.context_prompts == ["grassland", "snow", "mountain"]
    assert leafy.tile_size_px == 250 and leafy.quarters
    assert leafy.plot_size_px == 500
    assert leafy.token("present") == "<present>"
    knapweed = load_config("spotted_knapweed")  # bare name looks in configs/
    assert knapweed.species == "spotted knapweed"
    assert knapweed.alpha_band == 4 and not knapweed.quarters
    assert leafy.fingerprint() != knapweed.fingerprint()


def test_every_config_in_configs_is_valid() -> None:
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        load_config(path)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tile_size_px": 8}, "tile_size_px: Input should be greater than or equal to 16"),
        ({"tile_size_px": "big"}, "tile_size_px: Input should be a valid integer"),
        ({"colour": "yellow"}, "colour: unknown key"),
        ({"prompt_template": "a photo"}, "prompt_template: must contain a {token} slot"),
        ({"context_template": "{token} photo"}, "context_template: must contain a {context}"),
        ({"positive_class": "dense"}, "positive_class: 'dense' is not one of"),
        ({"bands": [0, 1, 2]}, "bands: band numbers start at 1"),
        ({"plot_size_m": 10.0}, "plot_size_m: 10.0 m does not match 2 x 2 quarters"),
        ({"scale_percentiles": [99, 1]}, "scale_percentiles: must be two percentiles"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path: Path, change: dict, expected: str) -> None:
    data = leafy_dict() | change
    path = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    line = info.value.one_line()
    assert line.startswith(f"{path}: ")
    assert expected in line
    assert "\n" not in line


def test_nested_class_error_names_the_item(tmp_path: Path) -> None:
    data = leafy_dict()
    data["classes"][1]["initializer"] = "yellow bracts"
    with pytest.raises(ConfigError, match=r"classes\.1\.initializer: must be a single word"):
        load_config(write_yaml(tmp_path, data))


def test_missing_required_key(tmp_path: Path) -> None:
    data = leafy_dict()
    del data["gsd_m"]
    with pytest.raises(ConfigError, match="gsd_m: Field required"):
        load_config(write_yaml(tmp_path, data))


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("species: spurge\nclasses: [absent,\n  present: x\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML at line \d+"):
        load_config(path)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
