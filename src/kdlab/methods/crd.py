"""``crd``: contrastive representation distillation (Tian, Krishnan & Isola 2020, "Contrastive Representation
Distillation", ICLR).

A contrastive (NCE) objective between the two networks' embeddings: for image i, the teacher's embedding of i is a
positive for the student's, the teacher's embeddings of K other training images are negatives, and symmetrically.
Embeddings v = normalize(W f + b) (128-d, one linear map per network on its penultimate features); the other side's
embeddings of all N training images live in a memory bank (one per network, N × 128, rows updated with momentum).
With the positive at column 0 and K negatives drawn from the rows of other classes:

    P_ij  = exp(⟨v_i, m_j⟩ / τ) / Z                    Z = N · mean(exp(⟨v, m⟩ / τ)) over the first batch, then fixed
    h(P)  = P / (P + K/N)                              (probability that the pair came from the data)
    L_nce = −(1/B) Σ_i [ log h(P_i0) + Σ_{k≥1} log(1 − h(P_ik)) ]       (1 − h computed as (K/N) / (P + K/N + eps))
    L     = CE(y, p_s) + feat_weight · (L_nce(student anchors, teacher bank) + L_nce(teacher anchors, student bank))
    bank  m_index ← normalize(momentum · m_index + (1 − momentum) · v_index)          after the loss, training only

eps = 1e-7; banks start uniform in ±1/√(d/3). Defaults as RepDistiller (crd/criterion.py, crd/memory.py,
train_student.py: feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5; scripts: ``-b 0.8``, CE weight 1) and mdistiller
(CRD.FEAT.DIM 128, NCE.K 16384, NCE.TEMPERATURE 0.07, NCE.MOMENTUM 0.5, LOSS.FEAT_WEIGHT 0.8): feat_weight = 0.8,
CE weight 1, on the penultimate embedding before any dropout (``"<classifier>:input"`` or the model's
``pre_logits_name``; ``student_layers``/``teacher_layers``, one pair).

Each image's bank row is ``batch.index``, its position in the training split; the banks are sized by
``num_samples`` given to ``prepare``. The banks, the rows' labels and Z are buffers of the extra module ``head``:
checkpoints hold them, so a resumed run continues exactly; negatives come from torch's global RNG (saved in
checkpoints too).

Negatives: the reference (``mode=exact``, RepDistiller dataset/cifar100.py ``CIFAR100InstanceSample``; mdistiller's
copy is the same) draws them in its data loader, per image, from the images of the other classes *without*
replacement (``np.random.choice(cls_negative[target], k, replace=False)``; with replacement only when K exceeds the
other-class images). kdlab does the same, per anchor, in the method: its loaders know nothing of CRD, so the method
keeps every row's label (a buffer filled from ``batch.labels`` as batches come). Deviation: rows not seen yet (in the
first epoch) count as other classes. The draw costs O(B·N) random numbers per step, as the reference's per-image
permutation (~0.08 s for B = 64, N = 50,000, K = 16,384 on one CPU thread). ``other_class_negatives=false`` draws
uniformly from all N rows with replacement (the reference's memory-side AliasMethod sampler, ``idx=None``).

Other deviations, same values: scores are the anchor times the whole bank, then the K + 1 sampled columns are gathered
(without materializing B × (K+1) × 128 rows); the bank update is out of place (the old bank stays alive until backward
instead of gathering copies of its rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, Setup, check_param
from kdlab.methods.fp32 import fp32
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS

EPS = 1e-7


KEYS_PER_CHUNK = 1 << 24  # random keys drawn at once when sampling without replacement (64 MiB of fp32)


def sample_contrast_indices(index: Tensor, num_samples: int, k: int, labels: Tensor | None = None,
                            row_labels: Tensor | None = None) -> Tensor:
    """B × (K+1) bank rows: column 0 the positive (``index``), then K negatives drawn with torch's global RNG.

    Without labels the negatives are uniform over all rows, with replacement (the reference's memory-side sampler).
    With the anchors' ``labels`` and every row's ``row_labels`` (−1 where unknown) they are K *distinct* rows of the
    *other* classes, uniformly (as the reference's ``np.random.choice(cls_negative[y], K, replace=False)``); an anchor
    with fewer than K other-class rows draws with replacement, as the reference does then (uniform over all rows if
    no other row exists).
    """
    if labels is None or row_labels is None:
        negatives = torch.randint(0, num_samples, (len(index), k), device=index.device)
        return torch.cat([index.view(-1, 1), negatives], dim=1)
    other = row_labels.view(1, -1) != labels.view(-1, 1)  # B × N
    few = other.sum(1) < k
    if bool(few.all()):
        negatives = other_class_with_replacement(num_samples, k, labels, row_labels)
    else:
        negatives = other_class_without_replacement(other, k)
        if bool(few.any()):
            negatives[few] = other_class_with_replacement(num_samples, k, labels[few], row_labels)
    return torch.cat([index.view(-1, 1), negatives], dim=1)


def other_class_without_replacement(other: Tensor, k: int) -> Tensor:
    """B × K distinct column indices of ``other`` (B × N, True where allowed; at least K per row), uniformly: the K
    smallest of uniform random keys, the disallowed columns keyed above every allowed one. O(B·N) random numbers per
    call (the reference's per-image permutation costs the same), drawn in chunks of rows to bound the memory."""
    rows = max(1, KEYS_PER_CHUNK // other.shape[1])
    chunks = []
    for part in other.split(rows):
        keys = torch.rand(part.shape, device=part.device).masked_fill_(~part, 2.0)
        chunks.append(keys.topk(k, dim=1, largest=False, sorted=False).indices)
    return torch.cat(chunks)


def other_class_with_replacement(num_samples: int, k: int, labels: Tensor, row_labels: Tensor) -> Tensor:
    """B × K rows drawn uniformly with replacement from the rows of other classes (rows sorted by label, the anchor's
    class is a contiguous block that the draw skips; uniform over all rows if no other row exists)."""
    shape = (len(labels), k)
    order = torch.argsort(row_labels, stable=True)
    sorted_labels = row_labels[order]
    start = torch.searchsorted(sorted_labels, labels)
    n_same = torch.searchsorted(sorted_labels, labels, right=True) - start
    n_other = num_samples - n_same
    n_same = torch.where(n_other > 0, n_same, torch.zeros_like(n_same))
    n_other = torch.where(n_other > 0, n_other, torch.full_like(n_other, num_samples))
    u = torch.rand(shape, dtype=torch.float64, device=labels.device) * n_other.view(-1, 1)
    u = torch.minimum(u.long(), n_other.view(-1, 1) - 1)
    position = u + (u >= start.view(-1, 1)).long() * n_same.view(-1, 1)
    return order[position]


@fp32
def contrast_exp_scores(anchors: Tensor, bank: Tensor, rows: Tensor, T: float) -> Tensor:
    """exp(⟨anchor_i, bank[rows_ij]⟩ / T), B × (K+1); the bank is a constant (no gradient); fp32."""
    return ((anchors @ bank.detach().t()).gather(1, rows) / T).exp()


@fp32
def crd_nce_loss(probs: Tensor, num_samples: int) -> Tensor:
    """−(1/B)·Σ [log h(P_pos) + Σ_neg log(1 − h(P_neg))], h(P) = P / (P + K/N); P: B × (K+1), positive first; fp32."""
    c = (probs.shape[1] - 1) / num_samples  # K · P_noise, P_noise = 1/N
    log_pos = torch.log(probs[:, 0] / (probs[:, 0] + c + EPS))
    log_neg = torch.log(c / (probs[:, 1:] + c + EPS))
    return -(log_pos.sum() + log_neg.sum()) / probs.shape[0]


@torch.no_grad()
def momentum_update(bank: Tensor, index: Tensor, values: Tensor, momentum: float) -> Tensor:
    """A new bank whose rows ``index`` are normalize(momentum · row + (1 − momentum) · value); out of place."""
    rows = bank.index_select(0, index) * momentum + values.detach().to(bank.dtype) * (1.0 - momentum)
    return bank.index_copy(0, index, rows / rows.pow(2).sum(1, keepdim=True).sqrt())


class CRDHead(nn.Module):
    """The two linear embeddings (trained) and the two memory banks and Z (buffers, saved in checkpoints)."""

    bank_student: Tensor
    bank_teacher: Tensor
    z: Tensor
    row_labels: Tensor

    def __init__(self, dim_student: int, dim_teacher: int, feat_dim: int, num_samples: int) -> None:
        super().__init__()
        self.embed_student = nn.Linear(dim_student, feat_dim)
        self.embed_teacher = nn.Linear(dim_teacher, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        self.register_buffer("bank_student", torch.rand(num_samples, feat_dim) * (2 * bound) - bound)
        self.register_buffer("bank_teacher", torch.rand(num_samples, feat_dim) * (2 * bound) - bound)
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of (student anchors, teacher anchors); < 0: unset
        self.register_buffer("row_labels", torch.full((num_samples,), -1, dtype=torch.long))  # −1: not seen yet

    def embed(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        v_s = F.normalize(self.embed_student(f_s.flatten(1)).float(), dim=1)
        v_t = F.normalize(self.embed_teacher(f_t.flatten(1)).float(), dim=1)
        return v_s, v_t


@dataclass
class CRDParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: the classifier's input (the embedding)
    teacher_layers: list[str] = field(default_factory=list)  # default: the teacher classifier's input
    feat_weight: float = 0.8  # (mdistiller's CRD.LOSS.FEAT_WEIGHT, RepDistiller's -b)
    feat_dim: int = 128  # width of the embeddings and the banks
    nce_k: int = 16384  # negatives per anchor
    nce_t: float = 0.07  # temperature τ
    nce_m: float = 0.5  # momentum of the bank update
    other_class_negatives: bool = True  # negatives from other classes (the reference's mode=exact); False: any row


@METHODS.register("crd")
class CRD(PairedMethod):
    Params = CRDParams
    params: CRDParams
    layer_default = "embedding"
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: CRDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(len(self.s_layers) == 1, "student_layers", f"must name one layer, got {self.s_layers}")
        check_param(p.feat_weight >= 0, "feat_weight", f"must be >= 0, got {p.feat_weight}")
        check_param(p.feat_dim > 0, "feat_dim", f"must be > 0, got {p.feat_dim}")
        check_param(p.nce_k > 0, "nce_k", f"must be > 0, got {p.nce_k}")
        check_param(p.nce_t > 0, "nce_t", f"must be > 0, got {p.nce_t}")
        check_param(0.0 <= p.nce_m < 1.0, "nce_m", f"must be in [0, 1), got {p.nce_m}")
        self.head: CRDHead | None = None

    def extra_modules(self) -> list[nn.Module]:
        return [self.head] if self.head is not None else []

    def build(self, setup: Setup) -> None:
        if setup.num_samples <= 0:
            raise ValueError("crd sizes its memory banks by the training split: "
                             "call method.prepare(images, num_samples=len(train_split))")
        probe = setup.probe
        d_s = probe.features[self.s_layers[0]].flatten(1).shape[1]
        d_t = probe.teacher_features[self.t_layers[0]].flatten(1).shape[1]
        self.head = CRDHead(d_s, d_t, self.params.feat_dim, setup.num_samples)

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        index = ctx.batch.index
        if index is None:
            raise ValueError("crd needs each image's position in the training split (batch.index) to find its "
                             "memory-bank row; this batch has index=None")
        p, head = self.params, self.built(self.head)
        [(f_s, f_t)] = self.feature_pairs(ctx)
        v_s, v_t = head.embed(f_s, f_t)
        num_samples = head.bank_student.shape[0]
        if p.other_class_negatives:
            head.row_labels.index_copy_(0, index, ctx.labels)
            rows = sample_contrast_indices(index, num_samples, p.nce_k, ctx.labels, head.row_labels)
        else:
            rows = sample_contrast_indices(index, num_samples, p.nce_k)
        exp_s = contrast_exp_scores(v_s, head.bank_teacher, rows, p.nce_t)  # student anchors, teacher bank
        exp_t = contrast_exp_scores(v_t, head.bank_student, rows, p.nce_t)  # teacher anchors, student bank
        first = torch.stack([exp_s.mean(), exp_t.mean()]).detach() * num_samples
        head.z.copy_(torch.where(head.z < 0, first, head.z))  # set once, on the first batch (no host sync)
        z = head.z.clone()  # the buffer may change before backward
        loss = crd_nce_loss(exp_s / z[0], num_samples) + crd_nce_loss(exp_t / z[1], num_samples)
        if self.training:
            head.bank_student = momentum_update(head.bank_student, index, v_s, p.nce_m)
            head.bank_teacher = momentum_update(head.bank_teacher, index, v_t, p.nce_m)
        return {"loss_crd": p.feat_weight * loss}
