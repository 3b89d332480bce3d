"""One training loop for every method.

The method is any module whose ``forward(batch)`` takes a :class:`kdlab.batch.Batch` and returns ``{"logits": ...,
"loss_<part>": ...}`` and which offers ``students()``, ``extra_modules()``, ``trainable_parameters()``,
``trainable_state_dict()`` / ``load_trainable_state_dict()`` and ``on_epoch_start()`` (see
``kdlab.methods.base.Method``). The loop sums the ``loss_*`` parts and logs each; it has no per-method branch.

Resumption is exact: the data order and augmentation are a pure function of (seed, epoch) (see ``kdlab.data``), and
the checkpoint written at every epoch end holds the weights, optimizer, scheduler, RNG states and the history. Within
a long epoch a checkpoint is also written every ``checkpoint_every_s`` seconds, with the batches done and the epoch's
running sums; a run resumed from it continues at the next batch (:mod:`kdlab.engine.resume`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor, nn

from kdlab.batch import Batch
from kdlab.config import OptimConfig
from kdlab.engine import distributed
from kdlab.engine.device import autocast
from kdlab.engine.evaluate import evaluate, predict
from kdlab.engine.host import ThreadPolicy, tune_cpu_allocator
from kdlab.engine.interface import TrainableMethod
from kdlab.engine.optim import PerLossMomentumSGD, build_optimizer, build_scheduler
from kdlab.engine.progress import clock
from kdlab.engine.resume import (CHECKPOINT_EVERY_S, CheckpointClock, EpochProgress, epoch_batches, rng_state,
                                 set_rng_state)
from kdlab.engine.runio import RunIO
from kdlab.errors import ConfigError, DivergenceError
from kdlab.files import load_weights

# (epoch, batch_index, batch) -> the teacher's logits for exactly these views, or None to let the method run the teacher
TeacherCache = Callable[[int, int, Batch], Optional[Tensor]]


@dataclass
class EngineOptions:
    epochs: int
    optim: OptimConfig
    device: torch.device
    bf16: bool = False
    channels_last: bool = True
    compile: bool = False
    eval_test_every_epoch: bool = True
    model_meta: dict = field(default_factory=dict)  # JSON metadata stored in every saved weights file
    threads: int | str | None = None  # CPU threads: N, None (fixed from the machine) or "auto" (engine/host.py)
    dist: Optional[distributed.Dist] = None  # this process's rank in a DDP run (see engine/distributed.py)
    scale: dict = field(default_factory=dict)  # ranks, global batch, lr rule: recorded in the result
    checkpoint_every_s: float = CHECKPOINT_EVERY_S  # a mid-epoch checkpoint this often (0: at epoch ends only)


class Trainer:
    def __init__(self, method: nn.Module, train_loader: Any, eval_loaders: dict, options: EngineOptions, io: RunIO,
                 teacher_cache: TeacherCache | None = None) -> None:
        # nn.Module types its attributes Tensor | Module: the method's interface is TrainableMethod's
        self.method = cast(TrainableMethod, method)
        self.train_loader = train_loader
        self.eval_loaders = {k: v for k, v in eval_loaders.items() if v is not None and v.num_samples > 0}
        self.opt = options
        self.io = io
        self.teacher_cache = teacher_cache
        if options.device.type == "cpu":  # keep each step's peak memory mapped between steps (see engine/host.py)
            tune_cpu_allocator()
        memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.method.to(device=options.device, memory_format=memory_format)
        loss_groups: dict[str, float] = getattr(method, "loss_groups", dict)()
        if loss_groups and options.dist is not None and options.dist.enabled:
            raise ConfigError("this method's per-loss momenta (loss_groups) need one backward per loss group, which "
                              "DDP does not support; train it in one process")
        self.optimizer = build_optimizer(self.method.trainable_parameters(), options.optim, loss_groups)
        self.scheduler = build_scheduler(self.optimizer, options.optim, len(train_loader), options.epochs)
        dist = options.dist
        wrapped = distributed.wrap(method, dist, options.device) if dist and dist.enabled else method
        self.step_fn: Callable = torch.compile(wrapped) if options.compile else wrapped
        self.history: list[dict] = []
        self.best = {"val_top1": float("-inf"), "epoch": 0}
        self.epoch_seconds: list[float] = []  # wall time of each epoch this process ran (for the ETA)
        self.skipped = 0  # batches skipped for a non-finite loss (optim.skip_nonfinite)
        self.pending_rng: dict | None = None  # a mid-epoch checkpoint's RNG state, set where its epoch reached it
        self.threads = ThreadPolicy(options.threads) if options.device.type == "cpu" else None

    # -- public -------------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train (resuming from the last checkpoint if there is one) and return the final flat result dict."""
        start_epoch, resumed = self._restore()
        if resumed is not None:
            self.io.log(f"resuming {self.io.run_dir} at batch {resumed.batch}/{len(self.train_loader)} of epoch "
                        f"{start_epoch + 1}/{self.opt.epochs}")
        elif start_epoch:
            self.io.log(f"resuming {self.io.run_dir} after epoch {start_epoch}/{self.opt.epochs}")
        self.io.update_json(self.io.dir.meta, {"threads": self._threads_setting()})
        try:
            for epoch in range(start_epoch, self.opt.epochs):
                self._epoch(epoch, resumed if epoch == start_epoch else None)
            return self._finish()
        finally:
            if self.threads is not None:
                self.threads.restore()

    # -- one epoch ----------------------------------------------------------------------------------------------------
    def _epoch(self, epoch: int, resumed: EpochProgress | None = None) -> None:
        start = time.perf_counter()
        run = resumed or EpochProgress(epoch, correct=torch.zeros((), device=self.opt.device),
                                       lr=self.optimizer.param_groups[0]["lr"])
        row = {"epoch": epoch + 1, "lr": run.lr}
        if self.threads is not None:
            row["threads"] = self.threads.apply()
        row.update(self._train_epoch(run))
        row.update(self._evaluate(final=epoch + 1 == self.opt.epochs))
        self._select(row)
        self.history.append(row)
        self.io.write_history(self.history)
        self.io.log_scalars(row)
        self._checkpoint(epoch + 1)
        self.epoch_seconds.append(time.perf_counter() - start)
        left = (self.opt.epochs - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
        self.io.log(self._summary(row, self.opt.epochs, left))

    def _train_epoch(self, run: EpochProgress) -> dict:
        """Train one epoch from ``run`` (its start, or where a mid-epoch checkpoint left it); its metrics row."""
        method, epoch = self.method, run.epoch
        method.on_epoch_start(epoch, self.opt.epochs)
        method.train()
        pending, self.pending_rng = self.pending_rng, None
        batches = epoch_batches(self.train_loader, epoch, run.batch,
                                None if pending is None else lambda: set_rng_state(pending))
        bar = self.io.progress(batches, len(self.train_loader), f"epoch {epoch + 1}/{self.opt.epochs}",
                               start=run.batch)
        checkpoints = CheckpointClock(self.opt.checkpoint_every_s, self.opt.dist)
        start = time.perf_counter() - run.elapsed
        for index, batch in enumerate(bar, start=run.batch):  # a resumed epoch's batches keep their index
            loss = self._step(run, index, batch)
            run.batch = index + 1
            if loss is not None and index % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{run.seen / (time.perf_counter() - start):.0f}")
            if run.batch < len(self.train_loader) and checkpoints.due(run.batch):
                run.elapsed = time.perf_counter() - start
                self._checkpoint(epoch, run)
                checkpoints.reset()
        assert run.correct is not None
        sums, correct, seen = distributed.reduce_epoch(run.sums, run.correct, run.seen, self.opt.dist)
        elapsed = time.perf_counter() - start
        row = {f"train_{k}": (v / max(seen, 1)).item() for k, v in sums.items()}
        row.update(train_top1=100.0 * correct.item() / max(seen, 1), train_img_s=seen / max(elapsed, 1e-9),
                   train_time_s=elapsed)
        return row

    def _step(self, run: EpochProgress, index: int, batch: Batch) -> Tensor | None:
        """One optimizer step on batch ``index``, added to the epoch's running sums; its loss (None: skipped)."""
        if self.opt.channels_last:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        if self.teacher_cache is not None:
            batch.teacher_logits = self.teacher_cache(run.epoch, index, batch)
        try:
            out, loss, parts = train_step(self.step_fn, self.optimizer, batch, self.opt,
                                          self.method.trainable_parameters)
        except NonFiniteLoss as bad:
            self._non_finite(bad, run.epoch, index)
            self.scheduler.step()
            return None
        self.scheduler.step()
        for name, value in {"loss": loss, **parts}.items():
            run.sums[name] = run.sums.get(name, 0) + value.detach() * len(batch)
        assert run.correct is not None
        run.correct += out["logits"].detach().argmax(1).eq(batch.labels).sum()
        run.seen += len(batch)
        return loss

    def _evaluate(self, final: bool) -> dict:
        row: dict = {}
        distributed.sync_buffers(list(self.method.students().values()), self.opt.dist)
        for split, loader in self.eval_loaders.items():
            if split == "test" and not (self.opt.eval_test_every_epoch or final):
                continue
            for name, model in self.method.students().items():
                metrics = self._eval(model, loader)
                prefix = "" if name == "student" else f"{name}/"
                row.update({f"{prefix}{split}_{k}": v for k, v in metrics.items() if k != "n"})
        return row

    def _select(self, row: dict) -> None:
        """Model selection on the validation split only (never the test split); keeps the selected weights."""
        if "val_top1" not in row or row["val_top1"] <= self.best["val_top1"]:
            return
        self.best = {"val_top1": row["val_top1"], "epoch": row["epoch"]}
        self.io.save_weights(self.io.dir.best, self._student_state("student"),
                             {**self.opt.model_meta, "epoch": row["epoch"], "selected_by": "val_top1"})

    def _non_finite(self, bad: "NonFiniteLoss", epoch: int, index: int) -> None:
        """Skip the batch while ``optim.skip_nonfinite`` allows, else stop: one line, the last checkpoint kept."""
        where = f"{bad.part} is {bad.value} at epoch {epoch + 1}, step {index + 1}"
        if self.skipped < self.opt.optim.skip_nonfinite:
            self.skipped += 1
            self.io.log(f"warning: {where}; batch skipped ({self.skipped} of optim.skip_nonfinite="
                        f"{self.opt.optim.skip_nonfinite})")
            return
        kept = f"epoch {epoch}" if epoch else "none (it failed in its first epoch)"
        message = (f"training diverged: {where}; the run is stopped and not finished; last good checkpoint: {kept}. "
                   f"Lower optim.lr, set optim.grad_clip, or optim.skip_nonfinite=N to skip up to N such batches")
        self.io.write_json(self.io.dir.failure, {"error": message, "part": bad.part, "epoch": epoch + 1,
                                                 "step": index + 1})
        raise DivergenceError(message)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def _checkpoint(self, epochs_done: int, run: EpochProgress | None = None) -> None:
        """Save the training state after ``epochs_done`` epochs, and ``run``'s batches of the next (mid-epoch)."""
        state = {
            "epoch": epochs_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **rng_state(),
            "history": self.history,
            "best": self.best,
            "threads": self._threads_setting(),  # a resumed run continues with it (engine/host.py)
            "skipped": self.skipped,
            # bad files the streamed training split met so far (dataset.skip_bad_files): a resumed epoch counts them
            "bad_files": dict(getattr(self.train_loader, "bad_files", {})),
            "progress": run.as_state(self.opt.dist) if run is not None else None,  # under DDP: all ranks reduce
        }
        batch = run.batch if run is not None else 0
        self.io.save_checkpoint(epochs_done, self.method.trainable_state_dict(), state,
                                {**self.opt.model_meta, "epoch": epochs_done, **({"batch": batch} if batch else {})},
                                batch=batch)

    def _restore(self) -> tuple[int, EpochProgress | None]:
        """Load the last checkpoint: the epochs it completed and, for a mid-epoch one, the epoch's progress (its RNG
        state is then set where the resumed epoch reaches it, see :func:`kdlab.engine.resume.epoch_batches`)."""
        found = self.io.load_checkpoint()
        if found is None:
            return 0, None
        weights, state = found
        self.method.load_trainable_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        progress = state.get("progress")
        if progress is None:
            set_rng_state(state)
        else:
            self.pending_rng = {k: state[k] for k in ("rng_cpu", "rng_cuda")}
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.skipped = int(state.get("skipped", 0))
        if hasattr(self.train_loader, "bad_files"):
            self.train_loader.bad_files.update(state.get("bad_files") or {})
        if self.threads is not None:  # an older checkpoint without the setting: the count of its last epoch
            self.threads.resume(state.get("threads", (self.history[-1] if self.history else {}).get("threads")))
        self.io.write_history(self.history)  # drop rows of an epoch that ran past the checkpoint
        resumed = None if progress is None else EpochProgress.from_state(progress, self.opt.device, self.opt.dist)
        return int(state["epoch"]), resumed

    def _threads_setting(self) -> int | str:
        """The run's thread setting as recorded: the fixed count, ``"auto"``, or torch's count off the CPU."""
        return self.threads.setting if self.threads is not None else torch.get_num_threads()

    def _student_state(self, name: str) -> dict[str, Tensor]:
        return self.method.students()[name].state_dict()

    # -- end of training ----------------------------------------------------------------------------------------------
    def _finish(self) -> dict:
        for name in self.method.students():
            self.io.save_student(name, self._student_state(name), {**self.opt.model_meta, "epoch": self.opt.epochs})
        last = self.history[-1] if self.history else {}
        selected = dict(next((r for r in self.history if r["epoch"] == self.best["epoch"]), last))
        if "test_top1" not in selected and "test" in self.eval_loaders:
            selected.update(self._evaluate_selected())
        result = {k: v for k, v in last.items() if not k.startswith("train_") and k not in ("lr", "epoch")}
        result.update(
            epochs=self.opt.epochs,
            run_dir=str(self.io.run_dir),
            selected_epoch=selected.get("epoch", 0),
            selected_val_top1=selected.get("val_top1"),
            selected_test_top1=selected.get("test_top1"),
            selected_test_loss=selected.get("test_loss"),
            train_img_s=_mean(r.get("train_img_s") for r in self.history),
            train_time_s=sum(r.get("train_time_s", 0.0) for r in self.history),
            skipped_batches=self.skipped,
            collapsed=collapse_reason(last, int(self.opt.model_meta.get("num_classes") or 0)),
            optimizer_steps=self.scheduler.last_epoch - self.skipped,
            threads=self._threads_setting(),
            **self.opt.scale,
        )
        if result["collapsed"]:
            self.io.log(f"warning: {self.io.run_dir.name} collapsed: {result['collapsed']}")
        return result

    def _evaluate_selected(self) -> dict:
        """Test metrics of the val-selected weights, when the test split was not evaluated at every epoch."""
        student = self.method.students()["student"]
        current = {k: v.clone() for k, v in student.state_dict().items()}
        distributed.barrier(self.opt.dist)  # rank 0 wrote best.safetensors
        student.load_state_dict(load_weights(self.io.dir.best)[0])
        metrics = self._eval(student, self.eval_loaders["test"])
        student.load_state_dict(current)
        return {f"test_{k}": v for k, v in metrics.items()}

    def _eval(self, model: nn.Module, loader: Any) -> dict:
        """Metrics of ``model`` over the loader's split (under DDP: every rank's part, all-reduced)."""
        dist, opt = self.opt.dist, self.opt
        if dist is None or not dist.enabled:
            return evaluate(model, loader, opt.device, opt.bf16, opt.channels_last)
        logits, labels, img_s = predict(model, loader, opt.device, opt.bf16, opt.channels_last)
        return {**distributed.reduce_metrics(logits, labels, dist), "img_s": img_s}

    @staticmethod
    def _summary(row: dict, epochs: int, seconds_left: float) -> str:
        """The epoch's one line: ``epoch 3/10  loss 0.4312  train_top1 84.52  1830 img/s  val_top1 85.10
        test_top1 84.70  ETA 2:41`` (the ETA: the epochs left at this process's mean epoch time)."""
        parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train_loss', float('nan')):.4f}",
                 f"train_top1 {row.get('train_top1', float('nan')):.2f}", f"{row.get('train_img_s', 0):.0f} img/s"]
        parts += [f"{k} {row[k]:.2f}" for k in ("val_top1", "test_top1") if k in row]
        if row["epoch"] < epochs:
            parts.append(f"ETA {clock(seconds_left)}")
        return "  ".join(parts)


class NonFiniteLoss(Exception):
    """A batch's loss is NaN or infinite (raised before the optimizer step, so the weights stay as they were)."""

    def __init__(self, part: str, value: float) -> None:
        super().__init__(part)
        self.part, self.value = part, value


def train_step(step_fn: Callable, optimizer: torch.optim.Optimizer, batch: Batch, opt: EngineOptions,
               parameters: Callable[[], list] = list) -> tuple[dict, Tensor, dict]:
    """One optimizer step on one batch: forward under autocast, sum of the ``loss_*`` parts, backward, clip, step.

    When the method declared ``loss_groups`` (its optimizer is a :class:`PerLossMomentumSGD`), each group of parts is
    backpropagated on its own (``optim.grad_clip`` then clips each group's gradient).

    A non-finite loss raises :class:`NonFiniteLoss` naming the first bad part, before anything is updated.
    """
    with autocast(opt.device, opt.bf16):
        out = step_fn(batch)
    parts = {k: v.float() for k, v in out.items() if k.startswith("loss_")}
    loss = torch.stack(list(parts.values())).sum()
    if not distributed.all_finite(loss, opt.dist):  # one host sync per step (all ranks agree)
        part = next((k for k, v in parts.items() if not torch.isfinite(v)), "loss")
        raise NonFiniteLoss(part, float(parts.get(part, loss).detach()))
    optimizer.zero_grad(set_to_none=True)
    if isinstance(optimizer, PerLossMomentumSGD):  # one backward per loss group, each into its own gradient slot
        groups = optimizer.split(parts)
        for i, (group, group_loss) in enumerate(groups):
            group_loss.backward(retain_graph=i < len(groups) - 1)
            if opt.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(parameters(), opt.optim.grad_clip)
            optimizer.stash(group)
    else:
        loss.backward()
        if opt.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(parameters(), opt.optim.grad_clip)
    optimizer.step()
    return out, loss, parts


def collapse_reason(row: dict, num_classes: int) -> str | None:
    """Why a finished run counts as collapsed (its final accuracy at chance level), or None.

    Chance is 100/K %; a run within max(1, 0.1·chance) points of it has learned nothing (DKD without its warm-up on a
    short schedule ends at exactly 10.00% on 10 classes). Judged on validation top-1 (test when there is no val).
    """
    accuracy = row.get("val_top1", row.get("test_top1"))
    if not num_classes or accuracy is None:
        return None
    chance = 100.0 / num_classes
    if accuracy > chance + max(1.0, 0.1 * chance):
        return None
    split = "val" if "val_top1" in row else "test"
    return f"final {split} top-1 {accuracy:.2f}% is chance level ({chance:.2f}% for {num_classes} classes)"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
