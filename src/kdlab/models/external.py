"""Models from torchvision (``torchvision:NAME``) and timm (``timm:NAME``), built only when those libraries import.

Models are built freshly initialized (torchvision ``weights=None``, timm ``pretrained=False``); weights come from a
local file (``pretrained="path.safetensors"``) or the libraries' own ImageNet weights (``pretrained=torchvision`` /
``timm``, see :mod:`kdlab.models.hub`) through :func:`kdlab.models.weights.load_pretrained`.
Each model gets ``stage_names`` as kdlab's own do: ResNet-like trees use ``layer1..layer4``; timm models their
``feature_info``; anything else the children of its main feature container that end a resolution, found by a dry-run
forward with hooks.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.models.registry import EXTERNAL, MODELS
from kdlab.models.resnet import RESNET_STAGES
from kdlab.models.weights import load_pretrained

log = logging.getLogger(__name__)

LIBRARIES = ("torchvision", "timm")
DRY_RUN_SIZES = (64, 224)  # 64 is cheap; some models (Inception, fixed-size ViTs) only accept 224


def _kdlab_equivalent(arch: str) -> str:
    """kdlab's own name for ``arch`` if it has one (``mobilenet_v3_small`` -> ``mobilenetv3_small``)."""
    candidate = arch.replace("mobilenet_v3_", "mobilenetv3_")
    return candidate if candidate in MODELS else "models (`kdlab.models.list_models()`)"


def _import(library: str, arch: str) -> ModuleType:
    try:
        return importlib.import_module(library)
    except ImportError:
        reason = "is not installed"
    except Exception as exc:  # a broken install (e.g. a CUDA-only wheel on a CPU torch) fails with other errors
        reason = f"fails to import ({type(exc).__name__})"
    raise ConfigError(f"{library} {reason}; `pip install {library}` or use kdlab's own {_kdlab_equivalent(arch)}")


def _brief(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _unknown(library: str, arch: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{library} has no model {arch!r}{hint}")


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's size attribute (always two numbers; torch types it as any length)."""
    return size[0], size[1]


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first 3-channel ``nn.Conv2d`` for a fresh one taking ``in_channels``, other settings unchanged."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if name is None:
        raise ConfigError(f"cannot set in_channels={in_channels}: {type(model).__name__} has no 3-channel Conv2d")
    old = model.get_submodule(name)
    assert isinstance(old, nn.Conv2d)
    padding = old.padding if isinstance(old.padding, str) else _pair(old.padding)
    new = nn.Conv2d(
        in_channels, old.out_channels, _pair(old.kernel_size), _pair(old.stride), padding, _pair(old.dilation),
        old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv initialization
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _torchvision_model(arch: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    tv = _import("torchvision", arch)
    models = tv.models
    if not hasattr(models, "get_model"):
        raise ConfigError("torchvision is too old (needs torchvision.models.get_model, 0.14+); upgrade it")
    known = list(models.list_models())
    if arch not in known:
        raise _unknown("torchvision", arch, known)
    try:
        model = models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision cannot build {arch!r}: {_brief(exc)}") from None
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _timm_model(arch: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import("timm", arch)
    if hasattr(timm, "is_model") and not timm.is_model(arch):
        raise _unknown("timm", arch, list(timm.list_models()))
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"timm cannot build {arch!r}: {_brief(exc)}") from None


def _resolves(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return bool(name)


def _feature_info_stages(model: nn.Module) -> tuple[str, ...]:
    """Stage names from timm's ``feature_info`` (a list of dicts, or a ``FeatureInfo``), keeping those that resolve."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return ()
    entries = info.info if hasattr(info, "info") else info
    names = [e.get("module", "") if isinstance(e, dict) else getattr(e, "module", "") for e in entries]
    return tuple(n for n in names if isinstance(n, str) and _resolves(model, n))


def _main_container(model: nn.Module) -> tuple[str, nn.Module]:
    """The direct child holding the trunk (``features``, ``trunk_output``, ``stages``...): the largest sequence."""
    sequences = [(n, m) for n, m in model.named_children() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    if not sequences:
        return "", model
    return max(sequences, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def _record_size(sizes: dict[str, tuple[int, int]], name: str) -> Callable[..., None]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4:
            sizes[name] = (int(output.shape[-2]), int(output.shape[-1]))

    return hook


def _output_sizes(model: nn.Module, container: nn.Module, in_channels: int, size: int) -> dict[str, tuple[int, int]]:
    """Spatial output size (NCHW) of each child of ``container``, in call order, from one eval-mode forward."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = [child.register_forward_hook(_record_size(sizes, n)) for n, child in container.named_children()]
    param = next(model.parameters(), None)
    x = torch.zeros(1, in_channels, size, size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()  # BatchNorm must not update its running statistics on the probe
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # the probe size may be invalid for this model; the caller tries the next one
        sizes.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return sizes


def _resolution_ends(sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Names whose successor has a smaller map, plus the last; 1x1 outputs (global pooling) are no feature maps."""
    maps = [(n, s) for n, s in sizes.items() if s[0] * s[1] > 1]
    ends = [n for (n, s), (_, nxt) in zip(maps, maps[1:]) if nxt[0] * nxt[1] < s[0] * s[1]]
    return ends + [maps[-1][0]] if maps else []


def dry_run_stages(model: nn.Module, in_channels: int = 3) -> tuple[str, ...]:
    """Children of the main container that are the last at their spatial resolution (the final one included).

    The container is the model's largest ``Sequential``/``ModuleList`` child, or the model itself when that child
    spans fewer than two resolutions.
    """
    for base, container in (_main_container(model), ("", model)):
        for size in DRY_RUN_SIZES:
            ends = _resolution_ends(_output_sizes(model, container, in_channels, size))
            if len(ends) >= 2:
                return tuple(f"{base}.{n}" if base else n for n in ends)
    return ()


def resolve_stage_names(model: nn.Module, in_channels: int = 3) -> tuple[str, ...]:
    """``feature_info`` (timm), else ``layer1..layer4`` (ResNet-like), else the dry-run rule."""
    stages = _feature_info_stages(model)
    if stages:
        return stages
    if all(isinstance(getattr(model, n, None), nn.Module) for n in RESNET_STAGES):
        return RESNET_STAGES
    return dry_run_stages(model, in_channels)


def create_external_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    pretrained: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``torchvision:ARCH`` or ``timm:ARCH`` freshly initialized (never downloading), set ``stage_names``.

    ``pretrained``: a local weights file loaded with :func:`kdlab.models.weights.load_pretrained`. Other keyword
    arguments go to the library's constructor.
    """
    library, _, arch = name.partition(":")
    if library not in LIBRARIES or not arch:
        raise ConfigError(f"external model {name!r} must look like torchvision:ARCH or timm:ARCH")
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError("pretrained must be a weights file, torchvision or timm")
    build = _torchvision_model if library == "torchvision" else _timm_model
    model = build(arch, num_classes, in_channels, kwargs)
    # cast: torch types Module.__setattr__ for tensors and modules only; a plain attribute is set as on any object
    cast(Any, model).stage_names = resolve_stage_names(model, in_channels)
    if not model.stage_names:
        log.warning("could not find stages of %s; feature-based distillation will not work with it", name)
    if pretrained is not None:
        load_pretrained(model, pretrained, arch=name)
    return model


EXTERNAL.register("torchvision")(create_external_model)
EXTERNAL.register("timm")(create_external_model)
