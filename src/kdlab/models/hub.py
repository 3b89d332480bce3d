"""ImageNet weights from the hubs users know: ``model.pretrained=torchvision`` or ``model.pretrained=timm``.

kdlab's ImageNet architectures use torchvision's parameter names, so torchvision's default weights load into them
unchanged (first conv and classifier adapted by :func:`kdlab.models.weights.load_pretrained`); timm's ResNets share
those names too, and kdlab's ViT/DeiT, ConvNeXt and Swin are built with timm's names (``TIMM_DEFAULT_TAGS``: the tag
of timm's default weights, preferred when the cache holds several). The weights come through the library's own
weights API and cache when the library imports (torchvision: ``get_model_weights(arch).DEFAULT``, into
``torch.hub.get_dir()/checkpoints``; timm:
``create_model(arch, pretrained=True)``, from the Hugging Face cache), downloading on a machine with internet.
Without the library (torchvision and timm need a CUDA build of torch here), the same cache files are used when they
are there: ``$TORCH_HOME/hub/checkpoints/<torchvision file>`` and
``$HF_HOME/hub/models--timm--<arch>.<tag>/snapshots/*/model.safetensors``. Otherwise: a one-line error saying what to
install or which file to put where.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models.statedict import read_state_dict

HUBS = ("torchvision", "timm")

# kdlab name -> (torchvision builder, file name of torchvision's DEFAULT weights in the hub cache)
TORCHVISION_DEFAULTS = {
    "resnet18": ("resnet18", "resnet18-f37072fd.pth"),
    "resnet34": ("resnet34", "resnet34-b627a593.pth"),
    "resnet50": ("resnet50", "resnet50-11ad3fa6.pth"),  # IMAGENET1K_V2, torchvision's DEFAULT
    "mobilenetv3_small": ("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth"),
    "mobilenetv3_large": ("mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth"),  # IMAGENET1K_V2
    "efficientnet_b0": ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth"),
    "efficientnet_b2": ("efficientnet_b2", "efficientnet_b2_rwightman-c35c1473.pth"),
}
TIMM_SAME_NAMES = ("resnet18", "resnet34", "resnet50")  # timm's ResNets use torchvision's parameter names
# kdlab's transformer-era models are named and built as timm's: name -> timm's default pretrained tag (the weights
# ``timm.create_model(name, pretrained=True)`` loads, cached as ``models--timm--<name>.<tag>``)
TIMM_DEFAULT_TAGS = {
    "vit_tiny_patch16_224": "augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "deit_tiny_patch16_224": "fb_in1k",
    "deit_small_patch16_224": "fb_in1k",
    "deit_tiny_distilled_patch16_224": "fb_in1k",
    "deit_small_distilled_patch16_224": "fb_in1k",
    "convnext_tiny": "in12k_ft_in1k",
    "convnext_small": "in12k_ft_in1k",
    "swin_tiny_patch4_window7_224": "ms_in1k",
}
TIMM_NAMES = TIMM_SAME_NAMES + tuple(TIMM_DEFAULT_TAGS)


def _library(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # missing, or a wheel built for another torch (CUDA-only torchvision on a CPU torch)
        return None


def _architecture(arch: str, hub: str) -> str:
    """The hub's name for kdlab's ``arch`` (``torchvision:resnet18`` and ``timm:resnet18`` name themselves)."""
    library, sep, name = arch.partition(":")
    if sep:
        if library != hub:
            raise ConfigError(f"model.pretrained={hub} does not fit model {arch!r}; use model.pretrained={library}")
        return name
    if hub == "torchvision" and arch in TORCHVISION_DEFAULTS:
        return TORCHVISION_DEFAULTS[arch][0]
    if hub == "timm" and arch in TIMM_NAMES:
        return arch
    known = sorted(TORCHVISION_DEFAULTS) if hub == "torchvision" else list(TIMM_NAMES)
    raise ConfigError(f"model.pretrained={hub}: no {hub} ImageNet weights fit kdlab's {arch!r} "
                      f"(they do for: {', '.join(known)}; or use model={hub}:NAME)")


def torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_state(arch: str) -> Mapping[str, Tensor]:
    tv_arch = _architecture(arch, "torchvision")
    tv = _library("torchvision")
    if tv is not None:
        try:
            weights = tv.models.get_model_weights(tv_arch).DEFAULT
        except (ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"torchvision has no default weights for {tv_arch!r} ({exc})") from None
        try:
            return weights.get_state_dict(progress=True)
        except Exception as exc:  # no internet and nothing cached
            raise CheckpointError(f"torchvision could not load its {tv_arch} weights ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); put {Path(weights.url).name} "
                                  f"in {torch_hub_dir()}") from None
    expected = dict(TORCHVISION_DEFAULTS.values()).get(tv_arch) or f"{tv_arch}-*.pth"
    found = sorted(torch_hub_dir().glob(expected)) or sorted(torch_hub_dir().glob(f"{tv_arch}-*.pth"))
    if not found:
        raise CheckpointError(f"model.pretrained=torchvision: torchvision is not importable and its {tv_arch} weights "
                              f"are not in the cache ({torch_hub_dir() / expected}); install torchvision on a "
                              f"machine with internet, or copy that file there")
    return read_state_dict(found[0])


def hf_hub_dir() -> Path:
    home = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(home) / "hub" if not os.environ.get("HF_HUB_CACHE") else Path(home)


def _timm_state(arch: str) -> Mapping[str, Tensor]:
    timm_arch = _architecture(arch, "timm")
    timm = _library("timm")
    if timm is not None:
        try:
            return timm.create_model(timm_arch, pretrained=True).state_dict()
        except Exception as exc:
            raise CheckpointError(f"timm could not load its {timm_arch} weights ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    found = sorted(hf_hub_dir().glob(f"models--timm--{timm_arch}.*/snapshots/*/model.safetensors"))
    default = f"models--timm--{timm_arch}.{TIMM_DEFAULT_TAGS.get(timm_arch, '')}"
    if any(p.parents[2].name == default for p in found):  # timm's own default among several cached tags
        found = [p for p in found if p.parents[2].name == default]
    if len({p.parents[2].name for p in found}) > 1:
        tags = ", ".join(sorted({p.parents[2].name for p in found}))
        raise CheckpointError(f"model.pretrained=timm: several cached timm weights fit {timm_arch} ({tags}); "
                              f"keep one, or give the file: model.pretrained=PATH")
    if not found:
        raise CheckpointError(f"model.pretrained=timm: timm is not importable and no {timm_arch} weights are in the "
                              f"Hugging Face cache ({hf_hub_dir()}/models--timm--{timm_arch}.*); install timm on a "
                              f"machine with internet")
    return read_state_dict(found[-1])


def hub_state_dict(hub: str, arch: str) -> Mapping[str, Tensor]:
    """The ImageNet state dict ``hub`` (torchvision | timm) has for architecture ``arch`` (kdlab's name or
    ``torchvision:NAME`` / ``timm:NAME``)."""
    if hub == "torchvision":
        return _torchvision_state(arch)
    if hub == "timm":
        return _timm_state(arch)
    raise ConfigError(f"unknown weights hub {hub!r}; use one of {', '.join(HUBS)} or a weights file")


def available(hub: str, arch: str) -> bool:
    """True when ``hub``'s ImageNet weights for ``arch`` can be had here without asking for them over the network:
    the library imports (it downloads, or finds them in its cache), or its cache file is there."""
    try:
        if _library(hub) is not None:
            return True
        name = _architecture(arch, hub)
    except ConfigError:
        return False
    if hub == "torchvision":
        return any(torch_hub_dir().glob(f"{name}-*.pth"))
    return any(hf_hub_dir().glob(f"models--timm--{name}.*/snapshots/*/model.safetensors"))
