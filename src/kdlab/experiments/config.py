"""Experiment files: what an experiment names, as typed configs (YAML + ``key=value`` overrides, strictly checked).

    name: fmnist-demo
    dataset: {name: fashion_mnist}
    seeds: [0, 1, 2]
    teachers: [{name: resnet20}]
    ensembles: [{label: ens, teachers: [resnet20, vgg8], mode: mean}]  # optional: several teachers distilled as one
    assistants: [{name: resnet8, label: ta}]          # optional: TAKD's teacher assistants (distilled with kd)
    students: [{name: cnn_small}, {name: resnet18, label: resnet18-pretrained, pretrained: torchvision}]
    methods: [kd, {name: fitnets, hint_weight: 100}, at, dml, byot, {name: kd, label: takd, via: ta}]
    teacher_schedule: {epochs: 10, optim: {lr: 0.1}}
    student_schedule: {epochs: 5}
    sweep: {kd.T: [1, 2, 4, 8]}                        # optional: one labelled kd entry per value (experiments.sweep)
    workers: 4                                          # optional: runs at once (kdlab.scale.parallel); ddp: 2 ...

How an experiment expands into runs is :mod:`kdlab.experiments.plan`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

from kdlab.config import DataConfig, OptimConfig, apply_overrides, from_dict, load_yaml


@dataclass
class Schedule:
    epochs: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: Optional[int] = None  # overrides dataset.batch_size for these runs


@dataclass
class ModelEntry:
    """A teacher or student: a registry model, optionally pretrained, with a display label."""

    __extra__ = "kwargs"

    name: str = "resnet20"
    label: Optional[str] = None  # default: the model name (labels must be unique)
    pretrained: Optional[str] = None  # initialization from a local weights file ("pretrained vs scratch")
    checkpoint: Optional[str] = None  # teachers only: an already trained kdlab checkpoint, used as is
    method: Optional["MethodEntry"] = None  # assistants only: how they are distilled from the teacher (default kd)
    kwargs: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class MethodEntry:
    __extra__ = "params"

    name: str = "kd"
    label: Optional[str] = None  # default: the method name; use labels to compare settings of one method
    via: Optional[str] = None  # an assistant's (TAKD) or an ensemble's label: distill from it, not the teachers
    params: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass
class EnsembleEntry:
    """Several of the experiment's teachers distilled from as one teacher (:mod:`kdlab.runs.ensemble`): every logits
    method distils each student from it as from each teacher; a feature method only with ``via: <label>`` (and its
    teacher layers named per member, ``teacher_layers: [t0.layer3]``)."""

    teachers: list[str] = field(default_factory=list)  # labels of two or more of the experiment's teachers
    label: Optional[str] = None  # default: the members' labels joined by "+"
    mode: Literal["mean", "confident"] = "mean"  # weighted mean of the logits, or per sample the most confident's
    weights: Optional[list[float]] = None  # mean: one weight per member (default equal)

    @property
    def display(self) -> str:
        return self.label or "+".join(self.teachers)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out_dir: str = "experiments"  # the experiment lives in out_dir/name
    dataset: DataConfig = field(default_factory=DataConfig)
    teachers: list[ModelEntry] = field(default_factory=list)
    assistants: list[ModelEntry] = field(default_factory=list)  # TAKD: distilled from each teacher, then teach
    ensembles: list[EnsembleEntry] = field(default_factory=list)  # teachers distilled from as one (see EnsembleEntry)
    students: list[ModelEntry] = field(default_factory=list)
    methods: list[MethodEntry] = field(default_factory=list)  # the ce baseline is always added
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher_seed: int = 0
    teacher_schedule: Schedule = field(default_factory=Schedule)
    student_schedule: Schedule = field(default_factory=Schedule)
    assistant_schedule: Optional[Schedule] = None  # default: the students' schedule
    imports: list[str] = field(default_factory=list)  # plug-in modules imported before any name is resolved
    device: str = "auto"
    threads: Optional[Union[int, Literal["auto"]]] = None  # CPU threads per run; None: pinned (see TrainConfig)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    progress: bool = True
    tracking: Optional[Literal["none", "mlflow"]] = None  # mlflow: each run tracked, the report as a parent run
    tracking_uri: Optional[str] = None  # the MLflow server; None: $MLFLOW_TRACKING_URI
    eval_test_every_epoch: bool = True  # False: test only at the end (curves then show the val split only)
    share_teacher_outputs: bool = True  # compute a teacher's logits once per seed's data stream, reuse them
    teacher_views: int = 0  # K > 0: students see K fixed augmented views per image (dataset.fixed_views), and each
    #                         teacher's logits for them are computed once for every logits-only method and seed
    keep_teacher_cache: bool = False  # keep the cached logits on disk after a seed's runs are done
    export: list[str] = field(default_factory=list)  # e.g. [onnx]: export, verify (and int8) every student
    export_int8: bool = True  # with onnx: also the int8 model, its accuracy, size and latency ("deployable accuracy")
    # Scale out (kdlab.scale.parallel, kdlab.scale.ddp): none of these changes a run's key or result
    workers: Optional[int] = None  # runs at once in worker processes; None: 1 locally, as the Ray cluster allows
    workers_per_device: int = 1  # workers that may share one GPU (pack small runs); caps workers at GPUs x this
    cpus_per_worker: Optional[int] = None  # torch threads (Ray: CPUs) per worker; None: this machine's cores/workers
    executor: Literal["local", "ray"] = "local"  # local worker processes, or Ray tasks on a cluster
    ray_address: Optional[str] = None  # executor=ray: "auto", "ray://host:10001", host:port; None: a local Ray
    ddp: int = 1  # processes (GPUs) per run with DistributedDataParallel; dataset.batch_size stays the global batch
    # Sweeps (kdlab.experiments.sweep): {kd.T: [1, 2, 4]} expands a method entry into one labelled entry per point
    sweep: dict = field(default_factory=dict)
    sweep_samples: int = 0  # > 0: that many random points (seeded by sweep_seed) instead of the whole grid
    sweep_seed: int = 0

    @property
    def directory(self) -> Path:
        return Path(self.out_dir) / self.name


DEFAULT_EXPERIMENT = "fmnist_demo.yaml"


def default_experiment_path() -> Path:
    """The embedded default experiment (``kdlab run`` without a file, ``make demo``)."""
    return Path(str(resources.files("kdlab") / "configs" / DEFAULT_EXPERIMENT))


def load_experiment(tree: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, tree)


def load_experiment_file(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment from a YAML file (default: the embedded one) and ``key=value`` overrides."""
    tree = load_yaml(path or default_experiment_path())
    return load_experiment(apply_overrides(tree, list(overrides or [])))
