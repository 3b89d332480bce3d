"""``wkd``: Wasserstein-distance logit distillation, WKD-L (Lv, Yang, Liu & Li 2024, NeurIPS, "Wasserstein Distance
Rivals Kullback-Leibler Divergence for Knowledge Distillation").

KL compares two class distributions bin by bin; the discrete Wasserstein distance moves probability mass between
classes at a cost C_ij that reflects how dissimilar classes i and j are, so mass on a *similar* wrong class costs
little. As the reference (NKD's target/non-target split), with p = softmax(z), y the label and p̂^T the softmax over the
non-target classes at temperature T:

    L = CE(y, p_s) − mean(t_y · log p_s,y) + w · mean_n WD_λ(p̂^T_s, p̂^T_t; C without row/column y)
    WD_λ(a, b; C) = Σ_ij π_ij C_ij,   π = diag(u) K diag(v),  K = exp(−C/λ),  Sinkhorn: v ← b/(Kᵀu), u ← a/(K v)

starting from u = 1/(K−1), ``sinkhorn_iters`` rounds (each with +1e-8 in the division), gradients through u and v.

The cost: the reference offers class-similarity from linear CKA between per-class teacher features over the training
set (a precomputed file per teacher, ``COST_MATRIX: cka``, its default) or ``fc``: the teacher classifier's weight
vectors w_i, C_ij = 1 − cos(w_i, w_j). kdlab uses ``fc`` (it needs no pass over the data and no file), sharpened as the
reference does with ``COST_MATRIX_SHARPEN = 1``: C ← 1 − exp(−sharpen · C), then C ← relu(C) + 1e-8.

Defaults are the reference's CIFAR-100 config (configs/cifar100/wkd_l/res32x4_res8x4.yaml): T = 8, weight 600
(cosine-decayed to 0 over the last 90 of 240 epochs: ``decay_from = 0.625``), λ = 0.05, 10 iterations; its ImageNet
config uses T = 2 and weight 30 with no decay. The target term (weight 1, T = 1) is the reference's, not in the paper's
eq. for WKD-L, which is the WD term alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import ConfigError
from kdlab.methods.base import BaseParams, Context, Method, check_param
from kdlab.methods.hooks import classifier_name
from kdlab.methods.nkd import non_target
from kdlab.methods.registry import METHODS


def classifier_cost(weight: Tensor, sharpen: float = 1.0) -> Tensor:
    """K×K cost 1 − cos(w_i, w_j) of classifier rows, sharpened (1 − exp(−s·C)) when ``sharpen`` > 0."""
    w = F.normalize(weight.detach().float(), dim=1)
    cost = 1 - w @ w.T
    if sharpen:
        cost = 1 - torch.exp(-sharpen * cost)
    return F.relu(cost) + 1e-8


def sinkhorn_distance(a: Tensor, b: Tensor, cost: Tensor, lam: float, iters: int) -> Tensor:
    """Entropic Wasserstein distance Σ π·C per row of a, b (N×M) with per-row costs ``cost`` (N×M×M)."""
    kernel = torch.exp(-cost / lam)
    u = torch.full_like(a, 1.0 / a.shape[1])
    v = b
    for _ in range(iters):
        v = b / (torch.einsum("nij,ni->nj", kernel, u) + 1e-8)
        u = a / (torch.einsum("nij,nj->ni", kernel, v) + 1e-8)
    flow = u[:, :, None] * kernel * v[:, None, :]
    return (flow * cost).sum(dim=(1, 2))


def wkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, cost: Tensor, T: float, weight: float,
             lam: float = 0.05, iters: int = 10) -> Tensor:
    """−mean(t_y log s_y) + weight · mean WD over the non-target classes at temperature T; fp32."""
    z_s, z_t = student_logits.float(), teacher_logits.float()
    idx = labels[:, None]
    target = -(F.softmax(z_t, dim=1).gather(1, idx) * F.log_softmax(z_s, dim=1).gather(1, idx)).mean()
    n, k = z_s.shape
    keep = ~F.one_hot(labels, k).bool()
    pair = keep[:, :, None] & keep[:, None, :]
    costs = cost.float().expand(n, k, k)[pair].reshape(n, k - 1, k - 1)
    a = F.softmax(non_target(z_s, labels) / T, dim=1)
    b = F.softmax(non_target(z_t, labels) / T, dim=1)
    return target + weight * sinkhorn_distance(a, b, costs, lam, iters).mean()


@dataclass
class WKDParams(BaseParams):
    T: float = 8.0  # temperature of the non-target distributions (reference CIFAR-100: 8; ImageNet: 2)
    weight: float = 600.0  # weight of the Wasserstein term (reference CIFAR-100: 600; ImageNet: 30)
    decay_from: float = 0.625  # the weight is cosine-decayed to 0 from this fraction of the run; 1 turns it off
    sinkhorn_lambda: float = 0.05  # entropic regularization λ
    sinkhorn_iters: int = 10
    sharpen: float = 1.0  # C ← 1 − exp(−sharpen·C); 0 keeps 1 − cos
    classifier: str = ""  # the teacher's classifier module; "": its last nn.Linear


@METHODS.register("wkd")
class WKD(Method):
    Params = WKDParams
    params: WKDParams
    cost: Tensor  # a buffer: the classes' ground cost from the teacher's classifier

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: WKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.T > 0, "T", f"must be > 0, got {p.T}")
        check_param(p.weight >= 0, "weight", f"must be >= 0, got {p.weight}")
        check_param(0 <= p.decay_from <= 1, "decay_from", f"must be in [0, 1], got {p.decay_from}")
        check_param(p.sinkhorn_lambda > 0, "sinkhorn_lambda", f"must be > 0, got {p.sinkhorn_lambda}")
        check_param(p.sinkhorn_iters >= 1, "sinkhorn_iters", f"must be >= 1, got {p.sinkhorn_iters}")
        teacher = self.require_teacher()
        name = p.classifier or classifier_name(teacher, "method.classifier")
        try:
            layer = teacher.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"config key 'method.classifier': the teacher has no module {name!r}") from None
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ConfigError(f"config key 'method.classifier': {name!r} has no K×D weight")
        # derived from the frozen teacher at every build: not saved (persistent=False), identical on resume
        self.register_buffer("cost", classifier_cost(weight, p.sharpen), persistent=False)
        self.scale = 1.0

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        start = self.params.decay_from * epochs
        progress = (epoch + 1 - start) / max(epochs - start, 1e-9)
        self.scale = 1.0 if epoch + 1 <= start else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def reads_teacher_logits(self) -> bool:
        return True

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p = self.params
        loss = wkd_loss(ctx.logits, ctx.require_teacher_logits(), ctx.labels, self.cost, p.T, self.scale * p.weight,
                        p.sinkhorn_lambda, p.sinkhorn_iters)
        return {"loss_wkd": loss}
