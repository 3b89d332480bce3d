"""Weights files: safe reading (safetensors / weights_only), unwrapping, and adapting torchvision-named state dicts."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.errors import CheckpointError
from kdlab.models import create_model
from kdlab.models.weights import adapt_first_conv, load_pretrained, read_state_dict, save_state_dict


def _trained_like(name: str, **kwargs: object) -> nn.Module:
    """A model whose weights and BatchNorm statistics differ from a fresh one, as a pretrained model's would."""
    torch.manual_seed(1)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()(torch.randn(4, int(kwargs.get("in_channels", 3)), 32, 32))
    return model.eval()


def _torchvision_style_file(model: nn.Module, path: Path, wrap: str | None, prefix: str = "") -> Path:
    """Save ``model`` as a torchvision-named state dict (kdlab uses the same names), optionally DDP-style wrapped."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_state_dict(state, path)
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return path


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    "suffix,wrap,prefix",
    [(".safetensors", None, ""), (".pth", "state_dict", "module."), (".pt", "model", "_orig_mod."),
     (".bin", "model_state_dict", "module._orig_mod."), (".pth", None, "")],
)
def test_round_trip_gives_identical_outputs(tmp_path: Path, suffix: str, wrap: str | None, prefix: str) -> None:
    source = _trained_like("mobilenetv3_small", num_classes=10)
    path = _torchvision_style_file(source, tmp_path / f"w{suffix}", wrap, prefix)
    assert set(read_state_dict(path)) == set(source.state_dict())  # unwrapped, prefixes stripped
    target = create_model("mobilenetv3_small", num_classes=10)
    report = load_pretrained(target, path)
    assert not (report.skipped or report.adapted or report.missing or report.unexpected)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source(x))


def test_classifier_of_other_size_is_kept_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _torchvision_style_file(_trained_like("resnet18", num_classes=1000), tmp_path / "r18.safetensors", None)
    source = read_state_dict(path)
    target = create_model("resnet18", num_classes=10)
    fresh_fc = target.fc.weight.detach().clone()
    with caplog.at_level("INFO", logger="kdlab.models.weights"):
        report = load_pretrained(target, path)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and "fc.weight" in caplog.text
    assert torch.equal(target.fc.weight, fresh_fc)
    assert torch.equal(target.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert torch.equal(target.bn1.running_var, source["bn1.running_var"])


def test_mobilenet_head_keeps_shared_layers(tmp_path: Path) -> None:
    path = _torchvision_style_file(_trained_like("mobilenetv3_small", num_classes=1000), tmp_path / "m.pth", None)
    target = create_model("mobilenetv3_small", num_classes=100)
    report = load_pretrained(target, path)
    assert sorted(report.skipped) == ["classifier.3.bias", "classifier.3.weight"]
    assert torch.equal(target.classifier[0].weight, read_state_dict(path)["classifier.0.weight"])


def test_rgb_weights_into_one_channel_model_sum_the_filters(tmp_path: Path) -> None:
    source = _trained_like("resnet18", num_classes=10)
    path = _torchvision_style_file(source, tmp_path / "rgb.safetensors", None)
    target = create_model("resnet18", num_classes=10, in_channels=1)
    report = load_pretrained(target, path)
    assert report.adapted == ["conv1.weight [64, 3, 7, 7]->[64, 1, 7, 7]"]
    assert torch.allclose(target.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    # Summing keeps the response: a gray image equals the same image replicated on three channels.
    gray = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(target.eval()(gray), source(gray.expand(-1, 3, -1, -1)), atol=1e-4)


def test_seven_by_seven_stem_into_small_stem_is_resampled(tmp_path: Path) -> None:
    source = _trained_like("resnet18", num_classes=10)
    path = _torchvision_style_file(source, tmp_path / "r.pth", "state_dict")
    target = create_model("resnet18", num_classes=10, small_input=True)
    report = load_pretrained(target, path)
    assert report.adapted == ["conv1.weight [64, 3, 7, 7]->[64, 3, 3, 3]"]
    sums = target.conv1.weight.sum((2, 3))
    assert torch.allclose(sums, source.conv1.weight.sum((2, 3)), atol=1e-5)  # flat-patch response kept
    assert torch.equal(target.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_adapt_first_conv_rules() -> None:
    flat = adapt_first_conv(torch.ones(2, 3, 7, 7), (2, 3, 3, 3))
    assert flat is not None and torch.allclose(flat, torch.full((2, 3, 3, 3), 49 / 9))
    w = torch.randn(4, 3, 3, 3)
    six = adapt_first_conv(w, (4, 6, 3, 3))  # a multiple: filters tiled, halved
    assert six is not None and torch.allclose(six, torch.cat([w, w], 1) / 2)
    four = adapt_first_conv(w, (4, 4, 3, 3))  # otherwise every channel gets sum / 4
    assert four is not None and torch.allclose(four, w.sum(1, keepdim=True).expand(-1, 4, -1, -1) / 4)
    assert torch.allclose(four.sum(1), w.sum(1), atol=1e-6)
    assert torch.equal(adapt_first_conv(w, w.shape), w)
    assert adapt_first_conv(w, (8, 3, 3, 3)) is None  # other filter count: not adaptable


def test_missing_and_unexpected_keys_one_line(tmp_path: Path) -> None:
    state = create_model("mobilenetv3_small").state_dict()
    for i in range(4):
        del state[f"features.{i}.{'block.0.' if i else ''}0.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(create_model("mobilenetv3_small"), path)
    msg = _one_line(exc)
    assert "4 missing keys (features.0.0.weight, features.1.block.0.0.weight, features.2.block.0.0.weight, ...)" in msg
    assert "1 unexpected keys (extra.weight)" in msg
    report = load_pretrained(create_model("mobilenetv3_small"), path, strict=False)
    assert len(report.missing) == 4 and report.unexpected == ["extra.weight"]


def test_wrong_shape_and_old_batchnorm_counters(tmp_path: Path) -> None:
    state = create_model("mobilenetv3_small").state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 checkpoints
    path = tmp_path / "old.pth"
    torch.save(state, path)
    assert not load_pretrained(create_model("mobilenetv3_small"), path).missing
    state["features.12.0.weight"] = torch.zeros(576, 48, 1, 1)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc:
        load_pretrained(create_model("mobilenetv3_small"), path)
    assert "features.12.0.weight [576, 48, 1, 1] vs model [576, 96, 1, 1]" in _one_line(exc)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, how: str) -> None:
    marker, path = tmp_path / "code_ran", tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "evil": _Payload(marker)}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(path)
    assert "refusing to unpickle" in _one_line(exc)
    assert not marker.exists()


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(garbage)
    assert "cannot read" in _one_line(exc)
    for name, content in (("garbage.pth", b"garbage"), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as exc:
            read_state_dict(tmp_path / name)
        assert "cannot read" in _one_line(exc)
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown weights format"):
        read_state_dict(odd)
    meta = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, meta)
    with pytest.raises(CheckpointError) as exc:
        read_state_dict(meta)
    assert "holds no state dict" in _one_line(exc)


def test_save_state_dict_from_module(tmp_path: Path) -> None:
    model = create_model("mobilenetv3_small")
    for suffix in (".safetensors", ".pth"):
        save_state_dict(model, tmp_path / f"m{suffix}")
        loaded = read_state_dict(tmp_path / f"m{suffix}")
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
