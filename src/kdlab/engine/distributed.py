"""One run over several processes (GPUs) with DistributedDataParallel: ranks, sharding, reductions, the batch rule.

``torchrun --nproc_per_node=N -m kdlab train ...`` (or ``kdlab run ... ddp=N``) starts N processes that set
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`from_env` reads them and :func:`setup` joins the process group (NCCL
on CUDA, each rank on ``cuda:LOCAL_RANK``; Gloo on the CPU). What makes the N processes one run:

- ``dataset.batch_size`` is the *global* batch: every rank draws the same epoch permutation (a pure function of
  (seed, epoch)) and takes its contiguous part of each global batch (:func:`rank_slice`), so the union of the ranks
  sees exactly the single-process epoch, with the same number of optimizer steps;
- the method's trainable part (students, adapters, heads) is wrapped in DDP (gradients averaged over ranks = the
  gradient of the global batch's mean loss); the frozen teacher runs on every rank and DDP ignores it;
- before each evaluation the students' buffers (BatchNorm statistics) are taken from rank 0, each rank evaluates
  its part of the split and the counts are all-reduced, so metrics are those of rank 0's model on the whole split;
- the loss's finiteness is agreed by all ranks, so a NaN stops (or skips a batch on) every rank together;
- rank 0 writes every file (``RunIO(rank=...)``); every rank resumes from the same checkpoint.

BatchNorm normalizes with each rank's own part of the batch (DDP's default; no SyncBatchNorm), and losses over
the batch (RKD, SP, CC, CRD's bank, DIST's inter-class term, MLKD's batch alignment) see a rank's part only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from kdlab.config import OptimConfig
from kdlab.data.shard import rank_slice  # noqa: F401  (re-exported)
from kdlab.errors import ConfigError

LR_REFERENCE_BATCH = 256  # optim.lr_scaling=linear: optim.lr is the rate for this global batch (timm's lr_base_size)


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The rank and world size torchrun (or ``kdlab run ddp=N``) set in the environment; a single process without."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None
    return Dist(rank, world, local) if world > 1 else Dist()


def setup(dist: Dist, device: torch.device) -> torch.device:
    """Join the process group once (NCCL on CUDA, Gloo otherwise) and return this rank's device."""
    if not dist.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend, rank=dist.rank, world_size=dist.world_size,
                                 device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def shard(dist: Dist, *loaders) -> None:
    """Make each loader yield this rank's part of every (global) batch."""
    if dist.enabled:
        for loader in loaders:
            if loader is not None:
                loader.shard = (dist.rank, dist.world_size)


# -- the batch and learning-rate rule ---------------------------------------------------------------------------------
def batch_record(dist: Dist, global_batch: int, optim: OptimConfig) -> dict:
    """What a run records about its scale: ranks, global and per-rank batch, the lr rule and the lr it used."""
    if dist.enabled and global_batch % dist.world_size:
        raise ConfigError(f"config key 'dataset.batch_size': {global_batch} (the global batch) does not split evenly "
                          f"over {dist.world_size} ranks; use a multiple of {dist.world_size}")
    return {"world_size": dist.world_size, "global_batch": global_batch,
            "per_rank_batch": global_batch // dist.world_size, "lr_scaling": optim.lr_scaling,
            "lr_effective": effective_lr(optim, global_batch)}


def effective_lr(optim: OptimConfig, global_batch: int) -> float:
    """``optim.lr`` as given (``lr_scaling=none``) or scaled by global batch / 256 (``linear``, Goyal et al. 2017)."""
    if optim.lr_scaling == "linear":
        return optim.lr * global_batch / LR_REFERENCE_BATCH
    return optim.lr


# -- the model ---------------------------------------------------------------------------------------------------------
def wrap(method: nn.Module, dist: Dist, device: torch.device, find_unused: Optional[bool] = None) -> nn.Module:
    """The method in DDP, its frozen teacher ignored (not broadcast, no gradients). ``find_unused`` (default: when
    the method trains more than its student: adapters, heads, a second student) lets DDP finish its all-reduce when
    some trainable parameter gets no gradient in a step."""
    from torch.nn.parallel import DistributedDataParallel as DDP  # (torch.distributed's machinery: DDP runs only)

    teacher = getattr(method, "teacher", None)
    frozen = {id(t) for t in (*teacher.parameters(), *teacher.buffers())} if teacher is not None else set()
    ignored = [n for n, t in (*method.named_parameters(), *method.named_buffers()) if id(t) in frozen]
    DDP._set_params_and_buffers_to_ignore_for_model(method, ignored)
    if find_unused is None:
        find_unused = bool(method.extra_modules()) or len(method.students()) > 1  # type: ignore[operator]
    return DDP(method, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused)


def sync_buffers(modules: list[nn.Module], dist: Dist | None) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if dist is not None and dist.enabled:
        for module in modules:
            for buffer in module.buffers():
                tdist.broadcast(buffer, src=0)


# -- reductions --------------------------------------------------------------------------------------------------------
def all_finite(loss: Tensor, dist: Dist | None) -> bool:
    """Whether the loss is finite on every rank (one all-reduce under DDP, so all ranks take the same branch)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if dist is not None and dist.enabled:
        tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)
    return bool(finite.item())


def reduce_epoch(sums: dict[str, Tensor], correct: Tensor, seen: int,
                 dist: Dist | None) -> tuple[dict[str, Tensor], Tensor, int]:
    """An epoch's loss sums, correct count and sample count summed over ranks (the global batch's numbers)."""
    if dist is None or not dist.enabled:
        return sums, correct, seen
    names = sorted(sums)
    device = correct.device
    packed = torch.stack([torch.as_tensor(sums[n], dtype=torch.float64, device=device) for n in names]
                         + [correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    tdist.all_reduce(packed)
    return {n: packed[i] for i, n in enumerate(names)}, packed[-2], int(packed[-1].item())


def reduce_metrics(logits: Tensor, labels: Tensor, dist: Dist) -> dict[str, float]:
    """top-1 / top-5 / NLL over the whole split from every rank's part (what ``classification_metrics`` gives for
    the concatenated predictions)."""
    device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
    sums = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, NLL sum, samples
    classes = torch.zeros(1, dtype=torch.float64)
    if len(labels):
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None])
        nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        sums = torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), nll.item(), len(labels)],
                            dtype=torch.float64)
        classes[0] = logits.shape[1]
    sums, classes = sums.to(device), classes.to(device)
    tdist.all_reduce(sums)
    tdist.all_reduce(classes, op=tdist.ReduceOp.MAX)
    correct, correct5, nll_sum, n = sums.tolist()
    if n == 0:
        return {}
    metrics = {"top1": 100.0 * correct / n, "loss": nll_sum / n, "n": int(n)}
    if classes.item() > 5:
        metrics["top5"] = 100.0 * correct5 / n
    return metrics


def barrier(dist: Dist | None) -> None:
    if dist is not None and dist.enabled:
        tdist.barrier()


def any_rank(flag: bool, dist: Dist | None) -> bool:
    """Whether ``flag`` holds on any rank (one all-reduce under DDP, so all ranks take the same branch)."""
    if dist is None or not dist.enabled:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor(float(flag), device=device)
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return bool(value.item())
