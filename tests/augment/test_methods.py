"""The method registry: built-in entries, and a method added in one place plans and generates."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from spurge.augment import GenerationSettings, augment
from spurge.augment.generate import plan_images
from spurge.augment.methods import (
    METHODS,
    Method,
    generation_methods,
    get_method,
    register,
    unregister,
)
from spurge.augment.textual_inversion import TokenSettings, labelled_train_tiles
from spurge.cli import cli
from spurge.errors import ConfigError
from spurge.io.synthetic import read_synthetic_manifest
from spurge.train import TrainSettings
from tests.builders import make_site_tiles, make_small_tiles, tiny_config

FAST = dict(model="tiny-random", progress=False)


def upside_down_prompts(config, class_name):
    """A made-up method: two prompts per class, the second with a context."""
    return [(f"an upside-down photo of {class_name}", None), (f"{class_name} in fog", "fog")]


@pytest.fixture
def new_method():
    method = register(Method("upside-down", prompts=upside_down_prompts, help="test method"))
    yield method
    unregister(method.name)


def test_builtin_methods():
    assert list(METHODS) == ["none", "randaugment", "da-fusion", "textual-inversion",
                             "real-guidance"]  # fmt: skip
    assert generation_methods() == ["da-fusion", "textual-inversion", "real-guidance"]
    assert [m for m in METHODS if METHODS[m].uses_tokens] == ["da-fusion", "textual-inversion"]
    assert dict(get_method("randaugment").train_options) == {"randaugment": True}
    config = tiny_config()
    assert get_method("textual-inversion").prompts(config, "present") == [
        ("a drone photo of <present>", None)
    ]
    da = get_method("da-fusion").prompts(config, "present")
    assert da[0] == ("a drone photo of <present>", None)
    assert [c for _, c in da[1:]] == list(config.context_prompts)
    rg = get_method("real-guidance").prompts(config, "present")
    assert rg == [(config.prompt_template.format(token="leafy spurge with yellow bracts"), None)]
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of none,"):
        get_method("nope")
    with pytest.raises(ConfigError, match="makes no synthetic images"):
        GenerationSettings(method="randaugment")
    with pytest.raises(ConfigError, match="already registered"):
        register(Method("da-fusion", prompts=upside_down_prompts))
    with pytest.raises(ConfigError, match="no prompts"):
        Method("broken")


def test_a_registered_method_plans_and_generates(new_method, tmp_path):
    tiles = make_small_tiles(tmp_path / "tiles")
    config = tiny_config()
    settings = GenerationSettings(method="upside-down", per_tile=4, steps=4, strengths=(1.0, 0.5))
    items = plan_images(tiles, labelled_train_tiles(tiles, config), config, settings, "hash", None)
    # Prompts cycle as for every method: index i takes variant (i + i // 2) % 2.
    for item in items:
        index = [i for i in items if i.source_tile_id == item.source_tile_id].index(item)
        expected = upside_down_prompts(config, item.label)[(index + index // 2) % 2]
        assert (item.prompt, item.context) == expected
        assert item.method == "upside-down" and item.token_hash is None

    result = augment(tiles, config, tmp_path / "syn", settings, **FAST)
    rows = read_synthetic_manifest(tmp_path / "syn")
    assert result.generated == len(rows) == 4 * 4 and result.tokens is None
    assert set(rows["method"]) == {"upside-down"}
    # Same images as the plan (ids differ: the plan above used a dummy model hash).
    planned = sorted((i.source_tile_id, i.prompt, i.strength, i.seed) for i in items)
    stored = zip(
        rows["source_tile_id"], rows["prompt"], rows["strength"], rows["seed"], strict=True
    )
    assert sorted(stored) == planned
    assert not (tmp_path / "syn" / "tokens").exists()  # uses_tokens=False: no textual inversion

    # The CLI offers it without any edit to cli.py.
    res = CliRunner().invoke(cli, ["augment", "--help"])
    assert "upside-down" in res.output
    config_yaml = tmp_path / "tiny.yaml"
    import yaml

    config_yaml.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    args = ["augment", str(tiles), "--config", str(config_yaml), "--model", "tiny-random",
            "--method", "upside-down", "--per-tile", "1", "--steps", "2", "--strengths", "1.0",
            "--out", str(tmp_path / "cli")]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert set(read_synthetic_manifest(tmp_path / "cli")["method"]) == {"upside-down"}
    unregister("upside-down")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "'upside-down' is not one of" in res.output


def test_a_registered_token_method_learns_tokens(tmp_path):
    register(
        Method(
            "token-only-fog",
            uses_tokens=True,
            prompts=lambda config, name: [(f"{config.token(name)} in fog", "fog")],
        )
    )
    try:
        tiles = make_small_tiles(tmp_path / "tiles")
        settings = GenerationSettings(
            method="token-only-fog", per_tile=1, steps=2, strengths=(1.0,)
        )
        result = augment(
            tiles,
            tiny_config(),
            tmp_path / "syn",
            settings,
            token_settings=TokenSettings(steps=1, batch_size=1),
            **FAST,
        )
    finally:
        unregister("token-only-fog")
    rows = read_synthetic_manifest(tmp_path / "syn")
    assert result.tokens is not None and sorted(result.tokens.tokens) == ["absent", "present"]
    assert rows["token_hash"].notna().all()
    assert set(rows["prompt"]) == {"<absent> in fog", "<present> in fog"}


def test_evaluate_takes_baselines_from_the_registry(tmp_path, monkeypatch):
    """A store-less method registered in one place: evaluate asks no store for it and passes
    its train options to train().
    """
    import spurge.evaluate as evaluate_module

    register(Method("heavy-jitter", needs_store=False, train_options={"randaugment": True}))
    calls = []

    class Stop(Exception):
        pass

    def fake_train(tiles_dir, config, run_dir, settings, synthetic_dir=None):
        calls.append({"settings": settings, "synthetic_dir": synthetic_dir})
        raise Stop

    monkeypatch.setattr(evaluate_module, "train", fake_train)
    tiles = make_site_tiles(tmp_path / "tiles")
    try:
        with pytest.raises(Stop):
            evaluate_module.evaluate(
                tiles, tiny_config(), tmp_path / "eval", TrainSettings(progress=False),
                methods=["heavy-jitter"], shots=[1], seeds=[0],
            )  # fmt: skip
        with pytest.raises(ConfigError, match="unknown method 'made-up'"):
            evaluate_module.evaluate(tiles, tiny_config(), tmp_path / "e2", methods=["made-up"])
    finally:
        unregister("heavy-jitter")
    assert calls[0]["synthetic_dir"] is None and calls[0]["settings"].randaugment is True


def test_negative_prompt_is_part_of_the_image_id(tmp_path):
    """The unconditional prompt changes the images, so it changes their ids (only when set,
    so stores made without one keep their ids).
    """
    tiles = make_small_tiles(tmp_path / "tiles")
    config = tiny_config()
    train = labelled_train_tiles(tiles, config)

    def ids(**extra):
        settings = GenerationSettings(method="real-guidance", per_tile=2, **extra)
        return [i.image_id for i in plan_images(tiles, train, config, settings, "h", None)]

    assert ids() == ids(negative_prompt="")
    assert not set(ids()) & set(ids(negative_prompt="blurry"))
    assert ids() == ids(batch_size=1)  # batching does not change what an image is
