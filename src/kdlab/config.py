"""The configs of a training run: model, dataset, optimizer, method, and the run around them.

They are typed dataclasses filled strictly from YAML and ``key=value`` overrides by :mod:`kdlab.configparse` (the
rules are in its docstring); its public names are importable from here too (``from kdlab.config import from_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from kdlab.configparse import (
    MAX_CONFIG_BYTES,
    RangeError,
    StrictLoader,
    StrictYAMLError,
    apply_overrides,
    check_plain_name,
    coerce,
    deep_merge,
    dump_yaml,
    from_dict,
    load_config,
    load_yaml,
    parse_value,
    set_path,
    split_args,
    to_dict,
    yaml_load,
)

__all__ = [
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "MAX_CONFIG_BYTES",
    "RangeError",
    "StrictLoader",
    "StrictYAMLError",
    "apply_overrides",
    "check_plain_name",
    "coerce",
    "deep_merge",
    "dump_yaml",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_value",
    "set_path",
    "split_args",
    "to_dict",
    "yaml_load",
]


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
    checkpoint_every_s: float = 600.0  # also a mid-epoch checkpoint this often (seconds); 0: at epoch ends only

    def __check__(self, prefix: str = "") -> None:
        if not self.checkpoint_every_s >= 0:
            raise RangeError(f"config key {prefix + 'checkpoint_every_s'!r}: must not be negative, "
                             f"got {self.checkpoint_every_s}")
