"""``ofa``: One-for-All KD for heterogeneous architectures (Hao, Guo, Han, Tang, Hu, Wang & Xu 2023, NeurIPS,
"One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation").

Features of a CNN and of a ViT live in different spaces; OFA compares them in the one space all classifiers share,
the logits. Each student stage gets a projector branch ending in a classifier; every branch, and the student's own
logits, learn from the teacher's logits with the OFA loss, a KD whose target class is enhanced by an exponent eps:

    L_ofa(z, z_t) = −mean_n Σ_c [(p_t,c + 1[c=y])^eps − 1[c=y]] · log p_c,     p = softmax(z/T), p_t = softmax(z_t/T)
    L = CE(y, z_s) + kd_weight · L_ofa(z_s, z_t) + ofa_weight · Σ_stages L_ofa(branch_i(f_i), z_t)

(eps = 1 is soft-label cross-entropy with the teacher; eps > 1 raises the target's weight the more the teacher is
confident.) Branches, built from a dry run's feature shapes, so any student works:

- CNN maps N×C×H×W at stage i of S: S−1−i depthwise-separable stride-2 blocks (channels doubling, the last to D; a 1×1
  conv for the last stage), global average pool, linear to the K classes;
- token sequences N×L×C (ViT): a linear to D, max(S−1−i, 1) pre-norm transformer layers (4 heads), the class token
  (when the student has one: timm's ``num_prefix_tokens``/``num_tokens``, or ``class_token=first``) or the mean of the
  tokens, linear to K; vectors N×C: a linear to K.

Reference: Hao840/OFAKD ``distillers/ofa.py`` and ``train.py`` defaults: stages 1–4, eps 1 for every branch (its
README's ResNet-18 ← DeiT-T command uses 1.5), T = 1, gt/kd/ofa loss weights 1. Where kdlab departs from it: D is the
student's last-stage width (the reference takes max(student, teacher) widths; here the teacher may be given only as
precomputed logits), and the token branch has no patch-merging layers (the reference merges patches down to a 7×7
grid before its blocks). The branches train with the student and are discarded afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import BaseParams, Context, Method, Setup, check_param, loss_sum
from kdlab.methods.hooks import resolve_layers
from kdlab.methods.registry import METHODS


def ofa_loss(logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float, T: float = 1.0) -> Tensor:
    """−mean Σ_c ((p_t + onehot)^eps − onehot) · log softmax(z/T); fp32."""
    target = F.one_hot(labels, logits.shape[1]).float()
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    weight = (p_t + target) ** eps - target
    return -(weight * F.log_softmax(logits.float() / T, dim=1)).sum(1).mean()


def sep_conv(c_in: int, c_out: int, stride: int = 2) -> nn.Sequential:
    """Depthwise-separable block (DARTS' SepConv, as OFA's projectors): dw3×3(stride) 1×1 BN ReLU dw3×3 1×1 BN ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_in, 1, bias=False),
        nn.BatchNorm2d(c_in), nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU())


def map_branch(channels: int, downsamples: int, width: int, num_classes: int) -> nn.Sequential:
    """Projector for an N×C×H×W map: ``downsamples`` SepConv blocks (or a 1×1 conv), pool, linear."""
    blocks: list[nn.Module] = []
    if downsamples == 0:
        blocks.append(nn.Conv2d(channels, width, 1))
    for j in range(downsamples):
        out = width if j == downsamples - 1 else channels * 2
        blocks.append(sep_conv(channels, out))
        channels = out
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class TokenBranch(nn.Module):
    """Projector for an N×L×C token sequence: linear to ``width``, transformer layers, class token or mean, linear."""

    def __init__(self, channels: int, layers: int, width: int, num_classes: int, class_token: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(channels, width)
        heads = 4 if width % 4 == 0 else 1
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                                                 activation="gelu", batch_first=True, norm_first=True)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.class_token = class_token

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.norm(self.blocks(self.embed(tokens)))
        return self.head(x[:, 0] if self.class_token else x.mean(dim=1))


def has_class_token(model: nn.Module) -> bool:
    """timm's convention: ``num_prefix_tokens`` (or the older ``num_tokens``) > 0."""
    return int(getattr(model, "num_prefix_tokens", getattr(model, "num_tokens", 0)) or 0) > 0


@dataclass
class OFAParams(BaseParams):
    eps: list[float] = field(default_factory=lambda: [1.0])  # one for all, or one per stage plus one for the logits
    temperature: float = 1.0
    ofa_weight: float = 1.0  # weight of the branches' OFA losses (summed over stages)
    kd_weight: float = 1.0  # weight of the final logits' OFA loss
    student_layers: list[str] = field(default_factory=list)  # the stages with a branch; []: every stage
    class_token: Literal["auto", "first", "none"] = "auto"  # token branches: read the first token, or the mean


@METHODS.register("ofa")
class OFA(Method):
    Params = OFAParams
    params: OFAParams
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: OFAParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        self.stages = resolve_layers(student, p.student_layers, "method.student_layers")
        check_param(len(p.eps) in (1, len(self.stages) + 1), "eps",
                    f"needs 1 value or {len(self.stages) + 1} (one per stage, then the logits), got {len(p.eps)}")
        check_param(all(e > 0 for e in p.eps), "eps", f"must be > 0, got {p.eps}")
        check_param(p.temperature > 0, "temperature", f"must be > 0, got {p.temperature}")
        self.eps = list(p.eps) if len(p.eps) > 1 else [p.eps[0]] * (len(self.stages) + 1)
        self.branches = nn.ModuleDict()

    def student_layers(self) -> list[str]:
        return list(self.stages)

    def reads_teacher_logits(self) -> bool:
        return True

    def build(self, setup: Setup) -> None:
        feats, k, n = setup.probe.features, setup.num_classes, len(self.stages)
        last = feats[self.stages[-1]]
        width = last.shape[1] if last.dim() == 4 else last.shape[-1]
        token = {"auto": has_class_token(self.student), "first": True, "none": False}[self.params.class_token]
        for i, name in enumerate(self.stages):
            f = feats[name]
            if f.dim() == 4:
                branch: nn.Module = map_branch(f.shape[1], n - 1 - i, width, k)
            elif f.dim() == 3:
                branch = TokenBranch(f.shape[-1], max(n - 1 - i, 1), width, k, token)
            else:
                branch = nn.Sequential(nn.Flatten(), nn.Linear(f[0].numel(), k))
            self.branches[str(i)] = branch

    def extra_modules(self) -> list[nn.Module]:
        return [self.branches]

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        p, z_t = self.params, ctx.require_teacher_logits()
        branch_losses = [ofa_loss(self.branches[str(i)](ctx.features[name]), z_t, ctx.labels, self.eps[i],
                                  p.temperature) for i, name in enumerate(self.stages)]
        return {"loss_ofa": p.ofa_weight * loss_sum(branch_losses),
                "loss_kd": p.kd_weight * ofa_loss(ctx.logits, z_t, ctx.labels, self.eps[-1], p.temperature)}
