"""One preprocessing path: a tile becomes the same tensor in training and in `spurge map`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spurge.classifier import ModelCard, build_classifier, load_card, predict_proba, save_model
from spurge.train import FewShotDataset, SplitEvaluator, load_tile
from spurge.transform import TileTransform
from tests.builders import tiny_config


def _card() -> ModelCard:
    _, spec = build_classifier("random-small", 2, pretrained=False)
    return ModelCard.for_classifier("random-small", spec, tiny_config())


def test_training_and_map_preprocessing_give_identical_tensors(tmp_path):
    card = _card()
    # Tiles at the config's 32 px, network input 64 px: the resize path is exercised.
    assert (card.tile_size_px, card.input_size) == (32, 64)
    rng = np.random.default_rng(4)
    tiles = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    paths = []
    for k, tile in enumerate(tiles):
        paths.append(str(tmp_path / f"t{k}.png"))
        Image.fromarray(tile).save(paths[-1])
    # Training: the few-shot dataset's cached tiles, normalised as the training loop does.
    dataset = FewShotDataset(paths, [0, 1, 0], [[], [], []], 0.0, card.transform, augment=False)
    trained = card.transform.normalise(torch.stack([dataset[k][0] for k in range(3)]))
    # Validation/test scoring reads the PNGs through the same loader.
    scored = card.transform.normalise(torch.stack([load_tile(p, card.transform) for p in paths]))
    # Mapping: windows read from the ortho arrive as a uint8 (N, H, W, 3) batch.
    from spurge.classifier import preprocess

    mapped = preprocess(tiles, card)
    assert mapped.shape == (3, 3, 64, 64) and mapped.dtype == torch.float32
    assert torch.equal(trained, mapped)
    assert torch.equal(scored, mapped)
    # The 8-bit rounding happens after the resize: every value is (k / 255 - 0.5) / 0.5.
    levels = (mapped * 0.5 + 0.5) * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    # Without rounding (the old map path) the tensors differ: the test can tell them apart.
    unrounded = torch.nn.functional.interpolate(
        torch.as_tensor(tiles).permute(0, 3, 1, 2).float(),
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    assert not torch.equal(card.transform.normalise(unrounded), mapped)


def test_split_evaluator_and_predict_proba_agree(tmp_path):
    """The evaluator that scores val/test and the map's predict_proba give the same classes."""
    torch.manual_seed(0)
    model, spec = build_classifier("random-small", 2, pretrained=False)
    card = ModelCard.for_classifier("random-small", spec, tiny_config())
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        Image.fromarray(tile).save(tmp_path / f"t{k}.png")
    import pandas as pd

    frame = pd.DataFrame({"path": [f"t{k}.png" for k in range(6)], "target": [0] * 6})
    evaluator = SplitEvaluator(
        "test", frame, tmp_path, model, card.transform, False, torch.device("cpu"), 4
    )
    mapped = predict_proba(model, card, tiles).argmax(1).tolist()
    assert evaluator.predict() == mapped


def test_the_transform_is_stored_in_the_model_card(tmp_path):
    torch.manual_seed(0)
    model, spec = build_classifier("random-small", 2, pretrained=False)
    save_model(model, ModelCard.for_classifier("random-small", spec, tiny_config()), tmp_path)
    stored = json.loads((tmp_path / "model.json").read_text())["transform"]
    assert stored == {
        "size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear-antialias",
        "rounding": "uint8-half-even",
    }
    assert load_card(tmp_path).transform == TileTransform(
        size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )


def test_a_version_1_card_maps_with_the_transform_it_trained_with(tmp_path):
    torch.manual_seed(0)
    model, spec = build_classifier("random-small", 2, pretrained=False)
    save_model(model, ModelCard.for_classifier("random-small", spec, tiny_config()), tmp_path)
    card = json.loads((tmp_path / "model.json").read_text())
    transform = card.pop("transform")
    card.update(format_version=1, input_size=64, mean=transform["mean"], std=transform["std"])
    (tmp_path / "model.json").write_text(json.dumps(card))
    loaded = load_card(tmp_path)
    assert loaded.transform.size == 64 and loaded.transform.rounding == "uint8-half-even"


def test_transform_refuses_non_uint8_and_bad_shapes():
    transform = TileTransform(size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="uint8"):
        transform.resize(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        transform(np.zeros((4, 4, 3), dtype=np.uint8))
