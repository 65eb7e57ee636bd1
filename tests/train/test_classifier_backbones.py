"""Backbone registry: EfficientNet-Lite0 weights really load; missing weights fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spurge.classifier import (
    BACKBONES,
    ModelCard,
    build_backbone,
    build_classifier,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0_state,
    load_model,
    predict_proba,
    save_model,
)
from spurge.errors import ModelError
from tests.conftest import require_testdata


def test_registry_names():
    assert {"efficientnet-lite0", "resnet50", "dinov2", "random-small"} <= set(BACKBONES)
    with pytest.raises(ModelError, match="unknown backbone"):
        build_backbone("vgg-nope")


def test_efficientnet_lite0_weights_are_the_package_tensors():
    spec = build_backbone("efficientnet-lite0", pretrained=True)
    assert spec.num_features == 1280 and spec.input_size == 224
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    state = spec.module.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn1.running_var"], source["_bn0.running_var"])
    assert torch.equal(state["conv_head.weight"], source["_conv_head.weight"])
    assert torch.equal(state["bn2.bias"], source["_bn1.bias"])
    untrained = build_backbone("efficientnet-lite0", pretrained=False)
    assert not torch.equal(
        untrained.module.state_dict()["conv_stem.weight"], source["_conv_stem.weight"]
    )


def test_efficientnet_lite0_on_a_known_image_is_not_uniform():
    """With its ImageNet head, a real aerial image gives a confident, peaked prediction."""
    import rasterio
    import timm

    with rasterio.open(require_testdata("OSBS_029.tif")) as src:
        image = src.read([1, 2, 3], window=((0, 224), (0, 224)))
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_efficientnet_lite0_state(model, with_classifier=True)
    model.eval()
    x = (torch.from_numpy(image).float()[None] / 255 - 0.5) / 0.5
    with torch.no_grad():
        proba = model(x).softmax(1)[0]
    entropy = float(-(proba * proba.clamp_min(1e-12).log()).sum())
    assert float(proba.max()) > 0.1  # uniform would be 0.001
    assert entropy < np.log(1000) - 1.5
    # And the features differ between images (a broken load tends to collapse them).
    with torch.no_grad():
        feats = model.forward_head(
            model.forward_features(torch.cat([x, x.flip(1)])), pre_logits=True
        )
    assert float((feats[0] - feats[1]).abs().mean()) > 1e-3


def test_efficientnet_checkpoint_that_does_not_fit_is_refused(tmp_path):
    import timm

    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, bad)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    with pytest.raises(ModelError, match="backbone tensors"):
        load_efficientnet_lite0_state(model, bad)
    with pytest.raises(ModelError, match="not found"):
        load_efficientnet_lite0_state(model, tmp_path / "missing.pth")


def test_resnet50_without_local_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SPURGE_RESNET50_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="not available offline"):
        build_backbone("resnet50", pretrained=True)


def test_resnet50_loads_local_weights(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    reference = resnet50(weights=None)
    weights = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), weights)
    monkeypatch.setenv("SPURGE_RESNET50_WEIGHTS", str(weights))
    spec = build_backbone("resnet50", pretrained=True)
    assert spec.num_features == 2048
    assert torch.equal(spec.module.state_dict()["conv1.weight"], reference.conv1.weight)


def test_dinov2_without_local_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("SPURGE_DINOV2_MODEL", str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="not available offline"):
        build_backbone("dinov2", pretrained=True)


def _card(backbone: str, spec) -> ModelCard:
    from tests.builders import tiny_config

    return ModelCard.for_classifier(backbone, spec, tiny_config())


def test_efficientnet_classifier_round_trips_through_save_and_load(tmp_path):
    model, spec = build_classifier("efficientnet-lite0", 2, pretrained=True)
    card = _card("efficientnet-lite0", spec)
    save_model(model, card, tmp_path)
    loaded, loaded_card = load_model(tmp_path)
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        predict_proba(loaded, loaded_card, images), predict_proba(model, card, images), atol=1e-6
    )
    with pytest.raises(ModelError, match="cannot load weights"):
        (tmp_path / "model.json").write_text(
            loaded_card.model_copy(
                update={"backbone": "random-small", "weights_sha256": ""}
            ).model_dump_json()
        )
        load_model(tmp_path)


@pytest.mark.slow
def test_dinov2_architecture_builds_offline_for_loading():
    spec = build_backbone("dinov2", pretrained=False)
    assert spec.num_features == 768
    with torch.no_grad():
        out = spec.module.eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 768)
