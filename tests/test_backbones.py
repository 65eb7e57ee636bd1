"""Tests for :mod:`spurge.backbones`: BatchNorm folding for inference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spurge.backbones import fuse_batchnorm
from spurge.classifier import build_classifier


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["efficientnet-lite0", "random-small"])
def test_folded_model_gives_the_same_probabilities_without_batchnorm(name):
    model, spec = build_classifier(name, 2, pretrained=False)
    model = _trained_statistics(model)
    reference = copy.deepcopy(model)
    fused = fuse_batchnorm(model, spec.input_size)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(
        3, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)


class NormElsewhere(nn.Module):
    """A conv registered right before a BatchNorm that normalises the *input*, not the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_a_pair_that_is_not_a_chain_is_left_alone():
    model = _trained_statistics(NormElsewhere())
    reference = copy.deepcopy(model)
    out = fuse_batchnorm(model, 8)
    assert isinstance(out.norm, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(out(x), reference(x))
