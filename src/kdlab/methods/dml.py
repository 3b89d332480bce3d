"""``dml``: deep mutual learning, no teacher (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning", CVPR).

K students learn together; each one matches the others' predictions as well as the labels:

    L_k = CE(y, p_k) + 1/(K−1) · Σ_{j≠k} T² · KL(p_j^T ‖ p_k^T)        (p_j detached: a target for student k)
    L   = Σ_k L_k                                                      (one joint optimizer step per batch)

Each L_k reaches only student k's parameters, so one joint step trains every student on its own objective (the paper
updates them in turn, so later students see predictions already updated on this batch). The students are the given
one and ``num_students − 1`` copies of it, re-initialized (``reset_parameters`` of every submodule) with seeds
``torch.initial_seed() + i``; a model whose own init differs from the PyTorch defaults gets the defaults in the copies.
Defaults: num_students = 2, T = 1 (the paper's plain KL). All students are evaluated and saved ("student",
"student2", ...); the returned logits are the first student's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlab.batch import Batch
from kdlab.methods.base import BaseParams, Method, check_param
from kdlab.methods.kd import kd_loss
from kdlab.methods.registry import METHODS


def dml_loss(all_logits: list[Tensor], T: float = 1.0) -> Tensor:
    """Σ_k mean_{j≠k} T²·KL(p_j ‖ p_k) with p_j detached: the mimicry terms of every student; fp32."""
    total = all_logits[0].new_zeros((), dtype=torch.float32)
    for k, z_k in enumerate(all_logits):
        others = [z_j.detach() for j, z_j in enumerate(all_logits) if j != k]
        total = total + sum(kd_loss(z_k, z_j, T) for z_j in others) / len(others)
    return total


def reinitialized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` whose submodules are re-initialized by their own ``reset_parameters`` under ``seed``."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return clone


@dataclass
class DMLParams(BaseParams):
    num_students: int = 2  # cohort size, the given student included
    T: float = 1.0  # softmax temperature of the mimicry KL


@METHODS.register("dml")
class DML(Method):
    Params = DMLParams
    params: DMLParams
    needs_teacher = False
    composable = False  # each student runs its own forward pass

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: DMLParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.num_students >= 2, "num_students", f"must be >= 2, got {p.num_students}")
        check_param(p.T > 0, "T", f"must be > 0, got {p.T}")
        base = torch.initial_seed()
        self.peers = nn.ModuleList(reinitialized_copy(student, (base + i) % 2**63) for i in range(1, p.num_students))

    def students(self) -> dict[str, nn.Module]:
        return {"student": self.student, **{f"student{i + 2}": peer for i, peer in enumerate(self.peers)}}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        all_logits = [model(batch.images) for model in self.students().values()]
        return {
            "logits": all_logits[0],
            "loss_ce": sum(self.hard_loss(z, batch.labels) for z in all_logits),
            "loss_dml": dml_loss(all_logits, self.params.T),
        }
