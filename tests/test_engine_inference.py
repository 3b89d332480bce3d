"""The frozen teacher as an inference module: BatchNorm folded, outputs and named features unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.engine.inference import conv_bn_pairs, fold_batchnorm
from kdlab.methods.hooks import FeatureHooks
from kdlab.models import create_model


def trained_looking(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("name", ["resnet20", "cnn_small", "wrn_16_2", "mobilenetv2", "resnet18"])
def test_folding_keeps_outputs_and_named_features(name):
    model = trained_looking(name)
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) < sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 1, 32, 32)
    stages = list(model.stage_names)
    with torch.no_grad(), FeatureHooks(model, stages) as a, FeatureHooks(folded, stages) as b:
        with a.capture() as fa:
            out_a = model(x)
        with b.capture() as fb:
            out_b = folded(x)
    torch.testing.assert_close(out_b, out_a, atol=1e-4, rtol=1e-4)
    for stage in stages:
        torch.testing.assert_close(fb[stage], fa[stage], atol=1e-4, rtol=1e-4)
    assert all(p.requires_grad is False for p in folded.parameters()) and not folded.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_hooked_convolutions_and_untraceable_models_are_left_alone():
    model = trained_looking("cnn_small")
    pairs = conv_bn_pairs(model)
    conv, bn = pairs[0]
    kept = fold_batchnorm(model, keep={conv})
    assert isinstance(kept.get_submodule(bn), nn.BatchNorm2d)

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    branchy = Branchy().eval()
    assert conv_bn_pairs(branchy) == [] and isinstance(fold_batchnorm(branchy).bn, nn.BatchNorm2d)
