"""ImageNet architectures: torchvision-equal parameter counts and names, forward/backward, stages, external models."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.models import create_model, list_models
from kdlab.models.efficientnet import StochasticDepth
from kdlab.models.external import create_external_model, dry_run_stages, resolve_stage_names

# kdlab name -> (torchvision name, parameters with 1000 classes, with 10 classes); torchvision's documented counts.
IMAGENET_MODELS = {
    "resnet18": ("resnet18", 11_689_512, 11_181_642),
    "resnet34": ("resnet34", 21_797_672, 21_289_802),
    "resnet50": ("resnet50", 25_557_032, 23_528_522),
    "mobilenetv3_small": ("mobilenet_v3_small", 2_542_856, 1_528_106),
    "mobilenetv3_large": ("mobilenet_v3_large", 5_483_032, 4_214_842),
    "efficientnet_b0": ("efficientnet_b0", 5_288_548, 4_020_358),
    "efficientnet_b2": ("efficientnet_b2", 9_109_994, 7_715_084),
}
NAMES = list(IMAGENET_MODELS)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _import_or_skip(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # CUDA-only wheels fail with more than ImportError on a CPU torch
        pytest.skip(f"{name} not importable: {type(exc).__name__}")


def test_all_registered() -> None:
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("name", NAMES)
def test_param_counts_match_torchvision(name: str) -> None:
    _, n1000, n10 = IMAGENET_MODELS[name]
    assert _n_params(create_model(name, num_classes=1000)) == n1000
    assert _n_params(create_model(name, num_classes=10)) == n10
    # The small stem only changes ResNet's conv1 kernel (7x7 -> 3x3); the others keep every shape.
    small = _n_params(create_model(name, num_classes=10, small_input=True))
    assert small == (n10 - 64 * 3 * (49 - 9) if name.startswith("resnet") else n10)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size,small_input", [(32, True), (32, False), (224, False)])
def test_forward_backward(name: str, size: int, small_input: bool) -> None:
    model = create_model(name, num_classes=10, small_input=small_input)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    logits.logsumexp(1).mean().backward()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None and torch.isfinite(first.weight.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_one_channel_input(name: str) -> None:
    model = create_model(name, num_classes=7, in_channels=1, small_input=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def _stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Size]]:
    seen: list[tuple[str, torch.Size]] = []
    handles = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, out.shape)))
        for n in model.stage_names
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size,small_input", [(64, False), (32, True)])
def test_stage_names_resolve_shallow_to_deep(name: str, size: int, small_input: bool) -> None:
    model = create_model(name, small_input=small_input).eval()
    seen = _stage_outputs(model, torch.randn(1, 3, size, size))
    assert [n for n, _ in seen] == list(model.stage_names)  # hooks fire in order, deepest last
    areas = [s[-2] * s[-1] for _, s in seen]
    assert areas == sorted(areas, reverse=True) and len(set(areas)) == len(areas)  # one stage per resolution
    head = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert seen[-1][1][1] == head.in_features  # the last stage is the map that gets pooled


def test_expected_stage_names() -> None:
    assert create_model("resnet50").stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert create_model("mobilenetv3_large").stage_names == tuple(f"features.{i}" for i in (1, 3, 6, 12, 16))
    assert create_model("mobilenetv3_small").stage_names == tuple(f"features.{i}" for i in (0, 1, 3, 8, 12))
    assert create_model("efficientnet_b2").stage_names == tuple(f"features.{i}" for i in (1, 2, 3, 5, 8))


@pytest.mark.parametrize("name", ["mobilenetv3_small", "efficientnet_b0"])
def test_generic_dry_run_rule_agrees_with_declared_stages(name: str) -> None:
    model = create_model(name)
    assert dry_run_stages(model) == model.stage_names
    assert resolve_stage_names(create_model("resnet18")) == ("layer1", "layer2", "layer3", "layer4")


def test_torchvision_details() -> None:
    mnv3 = create_model("mobilenetv3_large")
    bns = [m for m in mnv3.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 0.001 and bn.momentum == 0.01 for bn in bns)
    assert any(isinstance(m, nn.Hardswish) for m in mnv3.modules())
    assert any(isinstance(m, nn.Hardsigmoid) for m in mnv3.modules())
    eff = create_model("efficientnet_b0", dropout=0.4)
    assert eff.classifier[0].p == 0.4
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 for bn in eff.modules() if isinstance(bn, nn.BatchNorm2d))
    rates = [m.p for m in eff.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2 * 15 / 16)
    assert create_model("efficientnet_b2").classifier[0].p == 0.3
    with pytest.raises(ConfigError):
        create_model("resnet18", width=2)


def test_stochastic_depth_train_only() -> None:
    sd = StochasticDepth(0.5)
    x = torch.ones(2000, 4)
    out = sd(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}  # whole rows dropped, survivors rescaled by 1/(1-p)
    assert 0.4 < (out[:, 0] == 0).float().mean() < 0.6
    assert torch.equal(sd.eval()(x), x)
    model = create_model("efficientnet_b0").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_same_state_dict_as_torchvision(name: str) -> None:
    tv = _import_or_skip("torchvision")
    tv_name = IMAGENET_MODELS[name][0]
    for classes in (1000, 10):
        ours = {k: tuple(v.shape) for k, v in create_model(name, num_classes=classes).state_dict().items()}
        theirs = tv.models.get_model(tv_name, weights=None, num_classes=classes).state_dict()
        assert ours == {k: tuple(v.shape) for k, v in theirs.items()}


# External models: the real libraries where they import, otherwise stand-in modules that record the calls.


class _TinyResNetLike(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.layer1, self.layer2 = nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.layer3, self.layer4 = nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def _fake_torchvision(calls: list[dict]) -> types.ModuleType:
    def get_model(name: str, **kwargs: object) -> nn.Module:
        calls.append({"name": name, **kwargs})
        return _TinyResNetLike(kwargs["num_classes"]) if name == "resnet18" else create_model("mobilenetv3_small")

    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["resnet18", "mobilenet_v3_small"])
    return module


def test_torchvision_prefix_builds_without_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision(calls))
    model = create_model("torchvision:resnet18", num_classes=5, in_channels=1)
    assert calls == [{"name": "resnet18", "weights": None, "num_classes": 5}]
    assert model.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert model.conv1.in_channels == 1 and model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    generic = create_external_model("torchvision:mobilenet_v3_small", num_classes=10, in_channels=3)
    assert generic.stage_names == tuple(f"features.{i}" for i in (0, 1, 3, 8, 12))  # found by the dry run
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        create_model("torchvision:resnet81")


def test_timm_prefix_uses_feature_info(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def create(name: str, **kwargs: object) -> nn.Module:
        calls.append({"name": name, **kwargs})
        model = _TinyResNetLike(kwargs["num_classes"])
        model.feature_info = [{"num_chs": 8, "reduction": 2, "module": "conv1"}, {"module": "layer4"}, {"module": "x"}]
        return model

    fake = types.ModuleType("timm")
    fake.create_model, fake.is_model, fake.list_models = create, lambda n: n == "resnet18", lambda: ["resnet18"]
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = create_model("timm:resnet18", num_classes=3, in_channels=3)
    assert calls == [{"name": "resnet18", "pretrained": False, "num_classes": 3, "in_chans": 3}]
    assert model.stage_names == ("conv1", "layer4")  # unresolvable entries dropped


def test_missing_library_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` raise ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"torchvision is not installed; `pip install torchvision` .*resnet18$"):
        create_model("torchvision:resnet18")
    with pytest.raises(ConfigError, match="kdlab's own mobilenetv3_small"):
        create_model("torchvision:mobilenet_v3_small")
    with pytest.raises(ConfigError, match="timm is not installed"):
        create_model("timm:resnet50")
    with pytest.raises(ConfigError, match="torchvision:ARCH"):
        create_external_model("torchvision:", num_classes=10, in_channels=3)
    with pytest.raises(ConfigError, match="a weights file, torchvision or timm"):
        create_external_model("torchvision:resnet18", num_classes=10, in_channels=3, pretrained=True)


def test_real_external_models_if_importable() -> None:
    _import_or_skip("torchvision")
    model = create_model("torchvision:resnet18", num_classes=10, in_channels=1)
    assert model.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    tv_mnv3 = create_model("torchvision:mobilenet_v3_small", num_classes=10)
    assert tv_mnv3.stage_names == create_model("mobilenetv3_small").stage_names


def test_real_timm_models_if_importable() -> None:
    _import_or_skip("timm")
    model = create_model("timm:resnet18", num_classes=10, in_channels=1)
    assert model.stage_names and all(model.get_submodule(n) is not None for n in model.stage_names)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
