"""Typed configs: dataclasses filled from YAML and ``key=value`` overrides, strictly.

Rules, the same for every config in kdlab:
- ``a.b=value`` sets a nested key; the value is read as a YAML scalar (``4``, ``0.1``, ``true``, ``[1, 2]``, ``null``).
- Where a number is expected, every spelling Python's ``int()`` / ``float()`` accepts is one (``1e-3``, ``1_000``),
  in files and overrides alike (YAML 1.1 alone reads ``1e-3`` as a string).
- A scalar given to a section sets its ``name``: ``model=resnet20`` is ``model.name=resnet20``.
- Unknown keys and values of the wrong type are rejected with one line naming the key (a ConfigError).
- A dataclass may declare ``__extra__ = "field"``: keys it does not know are collected into that ``dict`` field and
  validated later by whoever knows their schema (a method's hyperparameters, a model's keyword arguments).
- Values are checked beyond their type: no NUL byte in a string (a path or a name), integers within 64 bits, seeds
  (``*seed``, ``seeds``) in [0, 2**64), ``threads`` at least 1; a dataclass may add its own ``__check__(prefix)``
  (the optimizer's: no negative learning rate, momentum or weight decay; Adam betas in [0, 1)).
- YAML is read by :class:`StrictLoader`: a key given twice, an anchor or alias (``&x`` / ``*x``, the "billion laughs")
  and a file over :data:`MAX_CONFIG_BYTES` are refused with one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

from kdlab.errors import ConfigError

C = TypeVar("C")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB: anything over 1 MiB is not one
INT_LIMIT = 1 << 63  # integers beyond 64 bits (signed) overflow every consumer (torch, numpy)
SEED_LIMIT = 1 << 64  # torch.manual_seed takes [0, 2**64)


class RangeError(ConfigError):
    """A value of the right type outside its key's range (a Union annotation does not try its other types then)."""


class StrictYAMLError(yaml.YAMLError):
    """A YAML construct kdlab configs refuse (duplicate key, anchor, alias), with the 1-based line it is on."""

    def __init__(self, problem: str, line: int) -> None:
        super().__init__(f"{problem} at line {line}")


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that also refuses a key given twice in one mapping (PyYAML keeps the last silently) and
    anchors/aliases (``&x`` / ``*x``: a few lines can expand to gigabytes, the "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise StrictYAMLError("anchors and aliases (&name, *name) are not allowed in kdlab configs",
                                  event.start_mark.line + 1)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader's own error names it
                    continue
                if duplicate:
                    raise StrictYAMLError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """``text`` parsed by :class:`StrictLoader` (raises a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader


# --------------------------------------------------------------------------------------------------------------------
# Generic parsing
# --------------------------------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Read a command-line value as a YAML scalar or flow collection; fall back to the plain string."""
    try:
        return yaml_load(text)
    except StrictYAMLError as exc:
        raise ConfigError(f"value {text!r}: {exc}") from None
    except yaml.YAMLError:
        return text


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for ``dotted == "a.b"``, creating sections; a scalar section becomes
    ``{name: ...}``."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"malformed config key {dotted!r}")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            child = node[key] = {"name": child}
        node = child
    last = keys[-1]
    if isinstance(node.get(last), dict) and not isinstance(value, dict):
        node[last]["name"] = value
    else:
        node[last] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings to a raw config tree (in place) and return it."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}")
        set_path(tree, key.strip(), parse_value(text))
    return tree


def split_args(args: list[str] | tuple[str, ...]) -> tuple[str | None, list[str]]:
    """Command-line settings: an optional leading YAML file, then ``key=value`` overrides."""
    path, overrides = None, []
    for arg in args:
        if "=" not in arg and arg.endswith((".yaml", ".yml")) and path is None and not overrides:
            path = arg
        elif "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r}")
        else:
            overrides.append(arg)
    return path, overrides


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping, read strictly (:class:`StrictLoader`, at most :data:`MAX_CONFIG_BYTES`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a config file "
                          f"(at most {MAX_CONFIG_BYTES})")
    try:
        data = yaml_load(path.read_text()) or {}
    except StrictYAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise ConfigError(f"{path}: invalid YAML ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    names = {int: "integer", float: "number", bool: "true/false", str: "string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, dict -> dataclass...)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except RangeError:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key {key!r}: expected one of {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a section, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item_tp is not Any:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_int(value, key)
        if isinstance(value, str) and (number := _parse_number(value, int)) is not None:
            return _check_int(number, key)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and (number := _parse_number(value, float)) is not None:
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if "\0" in str(value):
                raise RangeError(f"config key {key!r}: contains a NUL byte")
            return str(value)
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")


def _check_int(value: int, key: str) -> int:
    """Bounds every integer key has by its name: seeds in [0, 2**64), ``threads`` at least 1, others 64-bit."""
    name = key.rpartition(".")[2].partition("[")[0]
    if name.endswith("seed") or name == "seeds":
        if not 0 <= value < SEED_LIMIT:
            raise RangeError(f"config key {key!r}: a seed is an integer in [0, 2**64), got {value}")
    elif name == "threads" and value < 1:
        raise RangeError(f"config key {key!r}: must be at least 1 (or null for automatic), got {value}")
    elif not -INT_LIMIT <= value < INT_LIMIT:
        raise RangeError(f"config key {key!r}: {value} does not fit in 64 bits")
    return value


def _parse_number(text: str, kind: type) -> Any:
    """``text`` as Python reads an int or a float (``1e-3``, ``5E-4``, ``1.0e9``, ``1_000``, which YAML 1.1 leaves as
    strings), or None. Only called where the annotation expects a number: strings elsewhere stay strings."""
    try:
        return kind(text)
    except ValueError:
        return None


def check_plain_name(value: str | None, key: str) -> None:
    """A name that becomes one folder inside an output directory: not empty, no path separator, not ``.``/``..``
    (so nothing is ever written outside ``out_dir``)."""
    if value is None:
        return
    if not value.strip() or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise ConfigError(f"config key {key!r}: {value!r} is not a plain folder name (no '/', not '.' or '..'); it "
                          f"names a folder inside out_dir")


def coerce(tp: Any, value: Any, key: str) -> Any:
    """Check and convert one value against a type annotation, as a config field's (a ConfigError naming ``key``)."""
    return _coerce(tp, value, key)


def from_dict(cls: type[C], data: dict, prefix: str = "") -> C:
    """Build dataclass ``cls`` from a raw mapping, rejecting unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra_name = getattr(cls, "__extra__", None)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = dict(data.get(extra_name) or {}) if extra_name else {}
    for key, value in data.items():
        if key == extra_name:
            continue
        if key not in fields:
            if extra_name:
                extra[key] = value
                continue
            allowed = ", ".join(n for n in fields if n != extra_name)
            raise ConfigError(f"unknown config key {prefix + key!r}; allowed here: {allowed}")
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    if extra_name:
        kwargs[extra_name] = extra
    obj = cls(**kwargs)
    check = getattr(obj, "__check__", None)
    if callable(check):
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (YAML- and JSON-serializable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> C:
    """``base`` (raw dict) <- YAML file <- ``key=value`` overrides, then validated into ``cls``."""
    tree: dict = deep_merge(dict(base or {}), load_yaml(path) if path else {})
    apply_overrides(tree, overrides or [])
    return from_dict(cls, tree)


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif isinstance(out.get(key), dict) and not isinstance(value, (dict, type(None))):
            out[key] = {**out[key], "name": value}
        else:
            out[key] = value
    return out


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


# --------------------------------------------------------------------------------------------------------------------
# The configs of a training run
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which dataset, where its files are, how it is split and augmented."""

    name: str = "fashion_mnist"
    root: Optional[str] = None  # default: the dataset's own default path / environment variable
    val_ratio: float = 0.1  # fraction of the training split held out for model selection
    split_seed: int = 0  # the held-out split depends on this only, never on the training seed
    batch_size: int = 64  # the CIFAR KD protocol's batch; also more steps per epoch for short schedules
    eval_batch_size: int = 1024
    augment: bool = True  # random crop (with padding) and, where the dataset allows, horizontal flip
    fixed_views: int = 0  # K > 0: each image shows one of K fixed augmented views (the same for every seed), so a
    #                       teacher's outputs for them can be computed once (experiments: teacher_views: K)
    crop_padding: int = 4  # pixels of zero padding before the random crop
    flip: Optional[bool] = None  # None: the dataset's own default (True for natural images)
    image_size: Optional[int] = None  # resize on the device to this square size (e.g. 224); None keeps native size
    pad: int = 0  # zero pixels added on every side first, e.g. 2 for 28x28 -> 32x32 (before crop and resize)
    channels: Optional[int] = None  # repeat a grey image into this many channels (3 for RGB models and weights)
    normalize: Literal["dataset", "imagenet"] = "dataset"  # per-channel statistics used to normalize inputs
    train_subset: Optional[int] = None  # keep only the first N training images (quick trials, tests)
    test_subset: Optional[int] = None  # keep only the first N test images
    in_memory: Optional[bool] = None  # legacy spelling of cache: true = memory, false = none (with cache=auto)
    workers: int = 2  # DataLoader worker processes that decode on-disk (ImageFolder) data
    recipe: Literal["auto", "small", "imagenet"] = "auto"  # image folders' augmentation: small = pad + random crop +
    #    flip at the stored size; imagenet = RandomResizedCrop + flip (train), resize to size/0.875 + center crop
    #    (eval) at image_size (default 224); auto = imagenet when image_size >= 128, else small
    cache: Literal["auto", "memory", "disk", "none"] = "auto"  # image folders: memory = decoded once into memory;
    #    disk = a one-time decoded copy (Arrow, memory-mapped) under cache_dir; none = decode the files every epoch;
    #    auto = memory when the decoded split fits the budget (min(2 GiB, RAM / 8)), else none
    cache_dir: Optional[str] = None  # where cache=disk keeps its copies; None: $XDG_CACHE_HOME/kdlab or ~/.cache/kdlab
    skip_bad_files: bool = False  # skip (and count) unreadable / too small image files instead of stopping
    image_column: Optional[str] = None  # a Hugging Face dataset's / dict sample's image key (None: image or img)
    label_column: Optional[str] = None  # ... and its label key (None: label or labels)


@dataclass
class ModelConfig:
    """An architecture from the model registry, optionally initialized from a local weights file."""

    __extra__ = "kwargs"  # any other key is a keyword argument of the model's constructor

    name: str = "resnet20"
    pretrained: Optional[str] = None  # torchvision | timm (their ImageNet weights), or a local weights file
    kwargs: dict = field(default_factory=dict)


@dataclass
class MethodConfig:
    """A distillation method (or ``ce``) and its hyperparameters; those are validated by the method itself."""

    __extra__ = "params"

    name: str = "ce"
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # adam: L2 weight decay in the gradient; adamw: decoupled
    lr: float = 0.1  # peak learning rate for the batch size in `dataset.batch_size`
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)  # Adam and AdamW
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from lr/100, counted in (possibly fractional) epochs
    # multistep: fractions of the run (< 1) or epochs
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1  # multistep decay factor
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    skip_nonfinite: int = 0  # batches with a NaN/inf loss skipped (with a warning) before the run stops
    lr_scaling: Literal["none", "linear"] = "none"  # linear: lr is for a global batch of 256 (lr × batch / 256)

    def __check__(self, prefix: str = "optim.") -> None:
        """Values no optimizer takes (NaN passes: it is reported as a diverged run, as torch would train it)."""
        for key in ("lr", "momentum", "weight_decay", "grad_clip", "warmup_epochs"):
            if getattr(self, key) < 0:
                raise RangeError(f"config key {prefix + key!r}: must not be negative, got {getattr(self, key)}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise RangeError(f"config key '{prefix}betas[{i}]': Adam's betas are in [0, 1), got {beta}")


@dataclass
class TrainConfig:
    """Everything that determines one training run (a teacher, a baseline or a distilled student)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    # a kdlab checkpoint (model.safetensors) of the frozen teacher, or its run directory; a list of them: an ensemble
    # teacher (runs/ensemble.py) whose logits combine theirs, as teacher_mode says
    teacher: Optional[Union[str, list[str]]] = None
    teacher_mode: Literal["mean", "confident"] = "mean"  # ensemble: weighted mean of the logits, or per sample the
    #                                                       logits of the most confident teacher (highest max softmax)
    teacher_weights: Optional[list[float]] = None  # ensemble, mean: one weight per teacher (default equal)
    imports: list[str] = field(default_factory=list)  # plug-in modules imported before any name is resolved
    epochs: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # CPU intra-op threads: N pins N; None: one count fixed from the machine when the run starts (KDLAB_THREADS, else
    # torch's default), never from the load; "auto": each epoch, the cores other processes leave free (engine/host.py)
    threads: Optional[Union[int, Literal["auto"]]] = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the hardware does it well
    channels_last: bool = True
    compile: bool = False  # torch.compile the objective (25-35 s to compile on this CPU; worth it on long runs)
    out_dir: str = "runs"
    name: Optional[str] = None  # run directory name under out_dir; default: <model>-<method>-<dataset>-s<seed>
    progress: bool = True  # progress bar
    eval_test_every_epoch: bool = True  # test metrics at every epoch (for curves); selection uses val only
    tracking: Optional[Literal["none", "mlflow"]] = None  # mlflow: params, per-epoch metrics, results and weights
    #                                                       to an MLflow server (the `mlflow` extra); never stops a run
    tracking_uri: Optional[str] = None  # the MLflow server (http://host:5000); None: $MLFLOW_TRACKING_URI
