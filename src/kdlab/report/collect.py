"""Read an experiment's manifest and compute every run's test metrics from its saved checkpoints (with a cache).

Nothing here trusts the numbers a run logged: top-1/top-5, NLL, calibration, agreement with the teacher and the
confusion matrix all come from running the saved weights on the test split again (fp32, eval mode).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor

from kdlab import console
from kdlab.config import DataConfig, from_dict
from kdlab.data import BatchLoader, DatasetLoader, load_splits, make_loader
from kdlab.engine.evaluate import classification_metrics, predict
from kdlab.errors import KdlabError
from kdlab.expdir import ROLES, Manifest, PlannedRun
from kdlab.models.saved import load_model
from kdlab.report.calibration import ReliabilityBins, reliability_bins
from kdlab.report.efficiency import LATENCY_NOTE, measure_many
from kdlab.report.evalcache import CACHE_JSON, cache_key, read_cache, read_logits, write_cache
from kdlab.rundir import RunDir

Log = Callable[[str], None]
ECE_BINS = 15


# The settings that decide what the test images are; the others (batch sizes, augmentation...) change no logit.
_TEST_DATA_KEYS = ("name", "root", "image_size", "normalize", "pad", "channels", "test_subset")


class TestData:
    """The test split of the manifest's dataset, loaded on first use only (a fully cached report never loads it).

    ``objects`` and ``models`` are the Python API's in-process stand-ins: Dataset objects for the dataset's name, and
    model factories by architecture name (the user's modules, which no path can rebuild).
    """

    def __init__(self, dataset: dict, device: torch.device, objects: Any = None,
                 models: dict[str, Callable] | None = None, splits: Any = None, imports: Sequence[str] = (),
                 trust_code: bool = False) -> None:
        self.cfg: DataConfig = from_dict(DataConfig, dataset, prefix="dataset.")
        self.device = device
        self.objects = objects
        self.models = dict(models or {})
        self.splits = splits  # the dataset's splits when the caller has them loaded already
        self.imports = list(imports)  # the plug-in modules the user named: the only ones a weights file may import
        self.trust_code = trust_code
        self._loader: BatchLoader | DatasetLoader | None = None

    def load(self, path: Path, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
        """A run's saved weights in a rebuilt model (or in a fresh copy of the given module)."""
        return load_model(path, device or self.device, factories=self.models, allowed_imports=self.imports,
                          trust_code=self.trust_code)

    @property
    def identity(self) -> dict:
        """What the per-run caches are keyed on, besides the checkpoints."""
        return {k: getattr(self.cfg, k) for k in _TEST_DATA_KEYS}

    def loader(self) -> BatchLoader | DatasetLoader:
        if self._loader is None:
            splits = self.splits or load_splits(self.cfg, data=self.objects)
            self._loader = make_loader(splits.test, splits.info, self.cfg, train=False, device=self.device)
        return self._loader

    def input_shape(self) -> list[int]:
        """(C, H, W) of the images the models see."""
        return list(self.loader().input_shape)


@dataclass
class RunEval:
    """A finished run and what was computed from its checkpoints."""

    spec: PlannedRun
    result: dict
    history: list[dict]
    last: dict  # top1, top5, nll, ece, bins (from model.safetensors)
    selected: dict  # top1, top5, nll, ece, bins, epoch (from best.safetensors, else model.safetensors)
    input_shape: list[int]
    class_names: list[str]
    confusion: Tensor  # [K, K] counts, rows = true class, of the last-epoch predictions
    agreement: float | None = None  # % of test images where the student's top-1 is the teacher's
    kl: float | None = None  # mean KL(p_teacher ‖ p_student) in nats
    teacher_key: str | None = None
    cache_hit: bool = False
    cache: dict = field(default_factory=dict)  # the content of eval_cache.json (without its key)
    cache_key: dict = field(default_factory=dict)
    deploy: dict = field(default_factory=dict)  # from the run's exports (export/<format>/export.json), when present

    @property
    def bins(self) -> ReliabilityBins:
        return ReliabilityBins.from_dict(self.last["bins"])


def logit_metrics(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> dict:
    """top1/top5 (%), nll (nats) and ece (%) with its reliability bins, from test logits."""
    base = classification_metrics(logits, labels)
    rel = reliability_bins(torch.softmax(logits.double(), dim=1), labels, bins)
    return {"top1": base["top1"], "top5": base.get("top5"), "nll": base["loss"], "ece": rel.ece(),
            "bins": rel.to_dict()}


def teacher_agreement(student_logits: Tensor, teacher_logits: Tensor) -> tuple[float, float]:
    """(% of identical top-1 predictions, mean KL(p_teacher ‖ p_student) in nats)."""
    agree = 100.0 * student_logits.argmax(1).eq(teacher_logits.argmax(1)).double().mean().item()
    log_s = F.log_softmax(student_logits.double(), dim=1)
    log_t = F.log_softmax(teacher_logits.double(), dim=1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True).item()
    return agree, kl


def confusion_matrix(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    index = labels.long() * num_classes + logits.argmax(1)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _compute(spec: PlannedRun, result: dict, data: TestData, log: Log) -> tuple[dict, dict[str, Tensor]]:
    """Evaluate the last and the val-selected weights of a run on the test split."""
    log(f"evaluating {spec.key} ({spec.model_path.parent.name}) on the test split")
    model, meta = data.load(spec.model_path)
    logits, labels, _ = predict(model, data.loader(), data.device)
    tensors = {"last": logits, "labels": labels}
    best = spec.best_path
    epochs = int(meta.get("epoch") or result.get("epochs") or 0)
    selected_epoch = epochs
    if best is not None and best.is_file():
        best_model, best_meta = data.load(best)
        selected_epoch = int(best_meta.get("epoch") or result.get("selected_epoch") or 0)
        if selected_epoch != epochs:  # else the same weights as the last epoch's: no second pass
            tensors["selected"], _, _ = predict(best_model, data.loader(), data.device)
    metrics = {
        "input_shape": data.input_shape(),
        "class_names": list(meta.get("class_names") or []),
        "num_classes": int(meta.get("num_classes") or logits.shape[1]),
        "last": logit_metrics(logits, labels),
        "selected": {**logit_metrics(tensors.get("selected", logits), labels), "epoch": selected_epoch,
                     "source": "checkpoint" if best is None else best.name if best.is_file() else spec.model_path.name},
    }
    return metrics, tensors


def evaluate_run(spec: PlannedRun, result: dict, data: TestData, log: Log) -> tuple[RunEval, dict[str, Tensor]]:
    """A run's metrics (from its cache when the checkpoints are unchanged) and its test logits."""
    key = cache_key(spec.model_path, spec.best_path, data.identity)
    cached = read_cache(spec.run_dir, key)
    if cached is not None:
        try:
            tensors = read_logits(spec.run_dir)
            return _run_eval(spec, result, cached, tensors, key, True), tensors
        except (KeyError, TypeError, ValueError, AttributeError, OSError, SafetensorError) as exc:
            console.log.warning(f"warning: {spec.run_dir / CACHE_JSON} is malformed ({type(exc).__name__}); "
                                f"ignoring it and evaluating the run again")
    metrics, tensors = _compute(spec, result, data, log)
    write_cache(spec.run_dir, key, metrics, tensors)
    return _run_eval(spec, result, metrics, tensors, key, False), tensors


def _run_eval(spec: PlannedRun, result: dict, metrics: dict, tensors: dict[str, Tensor], key: dict,
              hit: bool) -> RunEval:
    """The :class:`RunEval` of computed or cached ``metrics`` (a malformed cache raises KeyError/TypeError here)."""
    logits, labels = tensors["last"], tensors["labels"]
    return RunEval(spec=spec, result=result, history=spec.files.read_history(), last=metrics["last"],
                  selected=metrics["selected"], input_shape=list(metrics["input_shape"]),
                  class_names=list(metrics["class_names"]),
                  confusion=confusion_matrix(logits, labels, int(metrics["num_classes"])), cache_hit=hit,
                  cache={k: v for k, v in metrics.items() if k != "key"}, cache_key=key)


# -- the whole experiment ---------------------------------------------------------------------------------------------
@dataclass
class Collected:
    runs: list[RunEval]
    skipped: list[dict]  # {"key", "run_dir", "reason"}: runs not finished (still running, interrupted, failed)
    notes: list[str]
    diverged: list[PlannedRun] = field(default_factory=list)  # runs stopped by a NaN/inf loss (failure.json)
    errors: list[dict] = field(default_factory=list)  # like skipped: finished runs that could not be evaluated


def _finished(spec: PlannedRun) -> tuple[dict | None, str | None]:
    """(result.json, None) for a finished run, else (None, why it is skipped). A finished run (or a given teacher)
    whose files are missing or damaged raises a KdlabError: that is an error of the report, not a skipped run."""
    if spec.given_checkpoint is not None:  # a given teacher: nothing was trained here
        if not spec.given_checkpoint.is_file():
            raise KdlabError(f"given checkpoint not found: {spec.given_checkpoint}")
        return {}, None
    files = spec.files
    if not files.finished():
        failure = files.read_failure()
        return None, f"failed: {failure['error']}" if failure else "unfinished (no result.json)"
    if not files.model.is_file():
        raise KdlabError(f"no {files.model.name}")
    files.check_finished()
    result = files.read_result()
    if result is None:
        raise KdlabError(f"unreadable {files.result.name}")
    return result, None


def _configured_teacher(run_dir: Path) -> Path | None:
    """The checkpoint a run was distilled from, as its config.yaml names it."""
    teacher = (RunDir(run_dir).read_config() or {}).get("teacher")
    if not teacher or not isinstance(teacher, str):  # none, or an ensemble (agreement with it is not reported)
        return None
    teacher_path = Path(teacher)
    return teacher_path if teacher_path.suffix == ".safetensors" else RunDir(teacher_path).model


def match_teacher(student: PlannedRun, teachers: list[PlannedRun]) -> PlannedRun | None:
    """The teacher run a student was distilled from: the checkpoint its config names (by path, then by folder and
    file name, in case the experiment was moved), else the teacher run of the same label and seed, else of the lowest
    seed."""
    same_label = sorted((t for t in teachers if t.student == student.teacher), key=lambda t: t.seed)
    configured = _configured_teacher(student.run_dir)
    if configured is not None:
        resolved, tail = configured.resolve(), (configured.parent.name, configured.name)
        for test in (lambda t: t.model_path.resolve() == resolved,
                     lambda t: (t.model_path.parent.name, t.model_path.name) == tail):
            found = next((t for t in (same_label or teachers) if test(t)), None)
            if found is not None:
                return found
    return next((t for t in same_label if t.seed == student.seed), same_label[0] if same_label else None)


def collect(manifest: Manifest, data: TestData, log: Log) -> Collected:
    """Evaluate every finished run of the manifest; teachers first, so students can be compared with them."""
    order = sorted(manifest.runs, key=lambda r: ROLES.index(r.role))  # stable: the manifest's order within a role
    runs: list[RunEval] = []
    skipped: list[dict] = []
    diverged: list[PlannedRun] = []
    notes: list[str] = []
    teacher_logits: dict[str, Tensor] = {}
    finished_teachers: list[PlannedRun] = []
    errors: list[dict] = []
    for spec in order:
        try:
            result, reason = _finished(spec)
            if result is not None:
                run, tensors = evaluate_run(spec, result, data, log)
        except KdlabError as exc:
            errors.append({"key": spec.key, "run_dir": spec.shown_path, "reason": str(exc)})
            continue
        if result is None:
            skipped.append({"key": spec.key, "run_dir": spec.shown_path, "reason": reason})
            if spec.files.read_failure():
                diverged.append(spec)
            continue
        if spec.role in ("teacher", "assistant"):  # an assistant teaches the students of its TAKD chain
            teacher_logits[spec.key] = tensors["last"]
            finished_teachers.append(spec)
        if spec.role != "teacher" and spec.teacher:
            teacher = match_teacher(spec, finished_teachers)
            if teacher is None:
                notes.append(f"{spec.key}: no finished run of teacher {spec.teacher!r}; no agreement / KL")
            else:
                run.teacher_key = teacher.key
                run.agreement, run.kl = teacher_agreement(tensors["last"], teacher_logits[teacher.key])
        run.deploy = deploy_metrics(spec)
        runs.append(run)
    return Collected(runs, skipped, notes, diverged, errors)


DEPLOY_KEYS = {"onnx": ("test_top1", "latency_b1_ms", "latency_b64_ms", "size_mb", "int8_test_top1",
                        "int8_latency_b1_ms", "int8_latency_b64_ms", "int8_size_mb")}


def deploy_metrics(spec: PlannedRun) -> dict:
    """What ``kdlab export`` measured of the run's student (``onnx_test_top1``, ``onnx_int8_test_top1``...)."""
    out: dict = {}
    for fmt, keys in DEPLOY_KEYS.items():
        result = spec.files.read_export(fmt) if spec.given_checkpoint is None else None
        if result:
            out.update({f"{fmt}_{k}".replace("onnx_int8_", "int8_"): result.get(k) for k in keys})
    return out


def efficiency_env() -> dict:
    """What a latency number depends on besides the weights: a change re-measures."""


    return {"torch": torch.__version__, "method": LATENCY_NOTE, "machine": platform.machine(),
            "processor": platform.processor()}


def efficiency_by_label(runs: list[RunEval], data: TestData, log: Log) -> dict[tuple[str, str], dict]:
    """Efficiency of each (label, architecture), measured once on its lowest-seed run and cached in that run; the
    latencies of all that are measured now are taken in the same interleaved rounds."""
    out: dict[tuple[str, str], dict] = {}
    todo: dict[tuple[str, str], RunEval] = {}  # measured now, each on its lowest-seed run
    env = efficiency_env()
    for run in sorted(runs, key=lambda r: r.spec.seed):
        label = (run.spec.student, run.spec.model)
        if label in out or label in todo:
            continue
        cached = run.cache.get("efficiency") or {}
        if cached.get("env") == env:
            out[label] = cached["values"]
        else:
            todo[label] = run
    if not todo:
        return out
    log("measuring parameters, FLOPs and CPU latency of " + ", ".join(f"{s} ({m})" for s, m in todo))
    models = [(data.load(run.spec.model_path, torch.device("cpu"))[0], tuple(run.input_shape), run.spec.model_path)
              for run in todo.values()]
    for (label, run), values in zip(todo.items(), measure_many(models)):
        run.cache["efficiency"] = {"env": env, "values": values}
        write_cache(run.spec.run_dir, run.cache_key, run.cache)
        out[label] = values
    return out
