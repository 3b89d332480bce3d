"""ViT / DeiT / ConvNeXt / Swin: timm's parameter names and counts, small variants, position-embedding resampling,
pretrained loading, distillation head, input specs, feature hooks, and a short Fashion-MNIST run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import kdlab
from kdlab.methods.hooks import FeatureHooks, classifier_name
from kdlab.models import InputSpec, create_model, input_spec_of, list_models
from kdlab.models.layers import resample_abs_pos_embed
from kdlab.models.swin import SwinTransformer
from kdlab.models.weights import load_pretrained, save_state_dict

# Written from timm's source (vision_transformer.py, deit.py, convnext.py, swin_transformer.py at huggingface/
# pytorch-image-models aa4b585): name -> (state-dict keys, parameters at 1000 classes, representative keys + shapes).
_VIT_KEYS = {"cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "patch_embed.proj.weight": (192, 3, 16, 16),
             "blocks.0.attn.qkv.weight": (576, 192), "blocks.11.mlp.fc1.weight": (768, 192),
             "blocks.11.mlp.fc2.bias": (192,), "norm.weight": (192,), "head.weight": (1000, 192)}
_DEIT_DIST_KEYS = {"dist_token": (1, 1, 384), "pos_embed": (1, 198, 384), "head_dist.weight": (1000, 384),
                   "head.bias": (1000,), "blocks.5.attn.proj.weight": (384, 384)}
_CONVNEXT_KEYS = {"stem.0.weight": (96, 3, 4, 4), "stem.1.weight": (96,), "stages.0.blocks.0.conv_dw.weight":
                  (96, 1, 7, 7), "stages.0.blocks.0.gamma": (96,), "stages.1.downsample.0.weight": (96,),
                  "stages.1.downsample.1.weight": (192, 96, 2, 2), "stages.3.blocks.2.mlp.fc1.weight": (3072, 768),
                  "head.norm.weight": (768,), "head.fc.weight": (1000, 768)}
_SWIN_KEYS = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.norm.weight": (96,),
              "layers.0.blocks.1.attn.relative_position_bias_table": (169, 3),
              "layers.1.downsample.norm.weight": (384,), "layers.1.downsample.reduction.weight": (192, 384),
              "layers.2.blocks.5.attn.qkv.weight": (1152, 384), "layers.3.blocks.1.mlp.fc2.weight": (768, 3072),
              "norm.weight": (768,), "head.fc.weight": (1000, 768)}
TIMM_MODELS = {
    "vit_tiny_patch16_224": (152, 5_717_416, _VIT_KEYS),
    "vit_small_patch16_224": (152, 22_050_664, {"pos_embed": (1, 197, 384), "head.weight": (1000, 384)}),
    "vit_base_patch16_224": (152, 86_567_656, {"blocks.11.attn.qkv.bias": (2304,), "head.weight": (1000, 768)}),
    "deit_tiny_patch16_224": (152, 5_717_416, _VIT_KEYS),
    "deit_small_patch16_224": (152, 22_050_664, {"pos_embed": (1, 197, 384)}),
    "deit_tiny_distilled_patch16_224": (155, 5_910_800, {"dist_token": (1, 1, 192), "pos_embed": (1, 198, 192),
                                                         "head_dist.weight": (1000, 192)}),
    "deit_small_distilled_patch16_224": (155, 22_436_432, _DEIT_DIST_KEYS),
    "convnext_tiny": (182, 28_589_128, _CONVNEXT_KEYS),
    "convnext_small": (344, 50_223_688, {"stages.2.blocks.26.gamma": (384,), "head.fc.bias": (1000,)}),
    "swin_tiny_patch4_window7_224": (173, 28_288_354, _SWIN_KEYS),
}
SMALL = ["vit_nano_patch4_32", "vit_tiny_patch4_32", "deit_nano_distilled_patch4_32", "convnext_atto_32",
         "swin_nano_patch2_window4_32"]
STAGES = {"vit_tiny_patch16_224": ("blocks.2", "blocks.5", "blocks.8", "blocks.11"),
          "convnext_tiny": ("stages.0", "stages.1", "stages.2", "stages.3"),
          "swin_tiny_patch4_window7_224": ("layers.0", "layers.1", "layers.2", "layers.3")}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_registered() -> None:
    assert set(TIMM_MODELS) | set(SMALL) <= set(list_models())


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_state_dict_is_timms(name: str) -> None:
    n_keys, n_params, keys = TIMM_MODELS[name]
    model = create_model(name, num_classes=1000)
    state = model.state_dict()
    assert len(state) == n_keys and _n_params(model) == n_params
    assert {k: tuple(state[k].shape) for k in keys} == keys
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in state)  # computed, as in timm
    if name in STAGES:
        assert model.stage_names == STAGES[name]


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "convnext_tiny",
                                  "swin_tiny_patch4_window7_224"])
def test_logits_match_timm(name: str) -> None:
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:  # a CUDA-only wheel fails with more than ImportError on a CPU torch
        pytest.skip(f"timm not importable: {type(exc).__name__}")
    reference = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    ours = create_model(name, num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", SMALL)
def test_small_variants_forward_backward_and_hooks(name: str) -> None:
    model = create_model(name, num_classes=10)
    names = list(model.stage_names) + [classifier_name(model, "k") + ":input"]
    with FeatureHooks(model, names) as hooks, hooks.capture() as feats:
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    # In training a distilled model returns the class head's logits: head_dist learns only from a method's loss.
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("head_dist.")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert len(model.stage_names) == 4 and feats[names[-1]].shape[0] == 2 and feats[names[-1]].ndim == 2
    grey = create_model(name, num_classes=7, in_channels=1).eval()  # Fashion-MNIST: 1x28x28
    with torch.no_grad():
        assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert input_spec_of(grey) == InputSpec(32, 1)


def test_position_embedding_follows_the_input_size(tmp_path: Path) -> None:
    model = create_model("vit_nano_patch4_32", num_classes=10).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        at_48 = model(x)  # 8x8 grid -> 12x12, interpolated in forward
    assert at_48.shape == (2, 10) and torch.isfinite(at_48).all()
    grid = model.pos_embed[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", antialias=True)
    resampled = resample_abs_pos_embed(model.pos_embed, (12, 12), num_prefix_tokens=1)
    torch.testing.assert_close(resampled[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 144, -1))
    torch.testing.assert_close(resampled[:, :1], model.pos_embed[:, :1])
    # The same weights loaded into a model built for 48 px: pos_embed resampled at load time, same logits.
    save_state_dict(model, tmp_path / "vit32.safetensors")
    built_48 = create_model("vit_nano_patch4_32", num_classes=10, img_size=48).eval()
    report = load_pretrained(built_48, tmp_path / "vit32.safetensors")
    assert report.adapted == ["pos_embed [1, 65, 96]->[1, 145, 96]"]
    with torch.no_grad():
        torch.testing.assert_close(built_48(x), at_48)


def test_checkpoint_of_another_size_classes_and_channels_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = create_model("deit_nano_distilled_patch4_32", num_classes=100)
    save_state_dict(source, tmp_path / "deit.safetensors")
    target = create_model("deit_nano_distilled_patch4_32", num_classes=10, in_channels=1, img_size=28)
    report = load_pretrained(target, tmp_path / "deit.safetensors")
    assert sorted(report.skipped) == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    assert {a.split()[0] for a in report.adapted} == {"pos_embed", "patch_embed.proj.weight"}
    torch.testing.assert_close(target.dist_token, source.dist_token)
    assert target.pos_embed.shape == (1, 2 + 49, 96)
    torch.testing.assert_close(target.pos_embed[:, :2], source.pos_embed[:, :2])  # both prefix tokens kept


def test_swin_loads_old_checkpoints_and_other_windows(tmp_path: Path) -> None:
    source = SwinTransformer(10, 3, 32, 2, 4, 24, (2, 2), (2, 4))
    state = source.state_dict()
    state.update({k: v for k, v in source.named_buffers() if v.numel()})  # older timm saved these buffers
    assert any(k.endswith("attn_mask") for k in state) and any(k.endswith("relative_position_index") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "old.safetensors"))
    same = SwinTransformer(10, 3, 32, 2, 4, 24, (2, 2), (2, 4))
    assert load_pretrained(same, tmp_path / "old.safetensors").unexpected == []
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same.eval()(x), source.eval()(x))
    other_window = SwinTransformer(10, 3, 32, 2, 8, 24, (2, 2), (2, 4))  # 49 -> 225 bias rows
    report = load_pretrained(other_window, tmp_path / "old.safetensors")
    assert len(report.adapted) == 4 and other_window(x).shape == (2, 10)


def test_timm_hub_names_use_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    torch.manual_seed(2)
    state = create_model("deit_tiny_distilled_patch16_224", num_classes=1000).state_dict()
    for tag, offset in (("fb_in1k", 0.0), ("other_tag", 1.0)):  # timm's default tag wins among several
        snapshot = tmp_path / "hub" / f"models--timm--deit_tiny_distilled_patch16_224.{tag}" / "snapshots" / "a1"
        snapshot.mkdir(parents=True)
        save_file({k: (v + offset).contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    model = create_model("deit_tiny_distilled_patch16_224", num_classes=10)
    report = load_pretrained(model, "timm", arch="deit_tiny_distilled_patch16_224")
    assert sorted(report.skipped) == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])


def test_distilled_deit_heads_in_training_and_eval() -> None:
    model = create_model("deit_nano_distilled_patch4_32", num_classes=10)
    x = torch.randn(3, 3, 32, 32)
    assert classifier_name(model, "k") == "head"  # the class token's embedding is "head:input"
    with FeatureHooks(model, ["head", "head_dist", "head:input"]) as hooks:
        with hooks.capture() as train_feats:
            logits = model.train()(x)
        torch.testing.assert_close(logits, train_feats["head"])
        assert train_feats["head_dist"].shape == (3, 10)
        with torch.no_grad(), hooks.capture() as eval_feats:
            mean = model.eval()(x)
        torch.testing.assert_close(mean, (eval_feats["head"] + eval_feats["head_dist"]) / 2)


def test_input_specs() -> None:
    imagenet = InputSpec(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_spec_of(create_model("convnext_tiny")) == imagenet
    assert input_spec_of(create_model("deit_tiny_patch16_224", num_classes=10)) == imagenet
    assert input_spec_of(create_model("vit_tiny_patch16_224")) == InputSpec(224, 3, (0.5,) * 3, (0.5,) * 3)
    grey = input_spec_of(create_model("resnet18", in_channels=1, small_input=True))
    assert grey is not None and grey.size == 32 and grey.mean == pytest.approx((0.449,)) and len(grey.std) == 1
    assert input_spec_of(create_model("resnet18")).size == 224
    assert input_spec_of(create_model("resnet20")) == InputSpec(32, 3)
    assert input_spec_of(create_model("vit_nano_patch4_32", img_size=28, in_channels=1)) == InputSpec(28, 1)
    assert input_spec_of(nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match="3 values for 1 channels"):
        InputSpec(32, 1, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


def test_small_vit_learns_fashion_mnist(tmp_path: Path) -> None:
    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    data = {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "train_subset": 1200, "test_subset": 300,
            "augment": False}
    run = kdlab.train({"name": "vit_nano_patch4_32", "kwargs": {"img_size": 28, "depth": 2}}, data, epochs=2,
                      optim={"name": "adamw", "lr": 3e-3, "weight_decay": 0.05}, device="cpu", progress=False,
                      precision="fp32", out_dir=str(tmp_path))
    assert run.metrics["test_top1"] > 25  # chance: 10%; measured 38.7% (a ViT from scratch learns slowly)
    assert run.history[1]["train_loss"] < run.history[0]["train_loss"]
