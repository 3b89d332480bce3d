"""``reviewkd``: knowledge review (Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via Knowledge Review", CVPR).

Each teacher level is matched by a student feature that *reviews* the deeper student levels too: starting from the
deepest level, an attention-based fusion (ABF) module mixes the student's level-i feature with the fused result of the
levels below it, and the hierarchical context loss (HCL) compares the outputs with the teacher's features at several
pyramid scales:

    ABF_i:  x = BN(conv1×1(S_i));  r = nearest_resize(R_{i+1}, x);  [a, b] = sigmoid(conv1×1([x, r]))
            R_i = resize(a·x + b·r, teacher size);  O_i = BN(conv3×3(R_i))     (deepest level: no fusion, R = x)
    HCL(O, T) = [MSE(O, T) + Σ_{l ∈ levels, l < h} w_l · MSE(pool_l(O), pool_l(T))] / (1 + Σ w_l),  w = ½, ¼, ⅛ ...
    L = CE(y, p_s) + feat_weight · min((epoch + 1) / warmup_epochs, 1) · Σ_i HCL(O_i, T_i)

(pool_l: adaptive average pooling to l×l; levels already ≥ the map's height are skipped and do not halve w). Levels are
every stage (``stage_names``, student and teacher paired from the deep end) plus the penultimate embedding as a 1×1 map
(``"<classifier>:input"``, or the model's ``pre_logits_name`` before a dropout), as the reference (student ``feats[1:] +
pooled_feat``); ``student_layers`` / ``teacher_layers`` name other levels, shallow to deep. ABF widths: the student's
channels in, the teacher's out, the middle width min(512, channels of the student's deepest level); conv weights start
kaiming-uniform (a = 1) — all read from the probe. Defaults as mdistiller (mdistiller/distillers/ReviewKD.py,
engine/cfg.py: REVIEWKD_WEIGHT 1.0, WARMUP_EPOCHS 20 counted from epoch 1, CE_WEIGHT 1, MAX_MID_CHANNEL 512, HCL levels
4, 2, 1 with halving weights and every stage weighted 1) and the authors' code (dvlab-research/ReviewKD
CIFAR-100/train.py: ``--kd-loss-weight 1.0``, ``--kd-warm-up 20``, whose first epoch has weight 0). Both tune
feat_weight per pair (5.0 for resnet32x4 -> resnet8x4, 0.6–1.0 for the plain ResNets).

Deviation: the reference matches the teacher's *pre-activation* stage outputs (before the final ReLU); kdlab reads what
the named layers output (post-activation for most models), unless ``teacher_layers`` names pre-activation modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.methods.base import Context, Setup, check_param
from kdlab.methods.fp32 import fp32
from kdlab.methods.hooks import as_map, check_map, embedding_layers, pair_deepest, resolve_layers
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


@fp32
def hcl_loss(student_features: list[Tensor], teacher_features: list[Tensor], levels: tuple[int, ...] = (4, 2, 1)
             ) -> Tensor:
    """Σ over feature pairs of the pyramid MSE (full map weight 1, then ½, ¼, ... per used level), normalized; fp32."""
    total = student_features[0].new_zeros(())
    for fs, ft in zip(student_features, teacher_features):
        ft = ft.detach()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in levels:
            if level >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one level's student feature with the fused deeper levels."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        conv1, conv2 = nn.Conv2d(c_in, c_mid, 1, bias=False), nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False)
        self.conv1 = nn.Sequential(conv1, nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(conv2, nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(conv1.weight, a=1)
        nn.init.kaiming_uniform_(conv2.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            assert residual is not None, "a fusing ABF runs after the deeper level"
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            a = self.att(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class Review(nn.Module):
    """One ABF per level, shallow to deep; run from the deepest level up."""

    def __init__(self, c_student: list[int], c_teacher: list[int], max_mid: int) -> None:
        super().__init__()
        mid, n = min(max_mid, c_student[-1]), len(c_student)
        self.abfs = nn.ModuleList(ABF(c_student[i], mid, c_teacher[i], fuse=i < n - 1) for i in range(n))

    def forward(self, features: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
        outputs: list[Tensor] = []
        residual = None
        for abf, x, size in zip(reversed(self.abfs), reversed(features), reversed(out_sizes)):
            out, residual = abf(x, residual, size)
            outputs.insert(0, out)
        return outputs


@dataclass
class ReviewKDParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # levels, shallow to deep; default: stages + embedding
    teacher_layers: list[str] = field(default_factory=list)  # levels, shallow to deep; default: stages + embedding
    feat_weight: float = 1.0  # (mdistiller's REVIEWKD_WEIGHT, the authors' --kd-loss-weight)
    warmup_epochs: int = 20  # linear warm-up of the review loss; 0 turns it off
    levels: list[int] = field(default_factory=lambda: [4, 2, 1])  # HCL pyramid sizes
    max_mid_channels: int = 512  # cap of the ABF middle width


@METHODS.register("reviewkd")
class ReviewKD(PairedMethod):
    Params = ReviewKDParams
    params: ReviewKDParams
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 params: ReviewKDParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(p.feat_weight >= 0, "feat_weight", f"must be >= 0, got {p.feat_weight}")
        check_param(p.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {p.warmup_epochs}")
        check_param(all(level > 0 for level in p.levels), "levels", f"must be positive sizes, got {p.levels}")
        check_param(p.max_mid_channels > 0, "max_mid_channels", f"must be > 0, got {p.max_mid_channels}")
        self.review: Review | None = None
        self.on_epoch_start(0, 1)

    def resolve_pairs(self, student: nn.Module, teacher: nn.Module) -> tuple[list[str], list[str]]:
        p = self.params
        s_key, t_key = "method.student_layers", "method.teacher_layers"
        s = resolve_layers(student, p.student_layers, s_key)
        t = resolve_layers(teacher, p.teacher_layers, t_key)
        s = s if p.student_layers else s + embedding_layers(student, [], s_key)
        t = t if p.teacher_layers else t + embedding_layers(teacher, [], t_key)
        if p.student_layers and p.teacher_layers:
            check_param(len(s) == len(t), "teacher_layers",
                        f"must pair with method.student_layers ({len(t)} vs {len(s)} layers)")
        return pair_deepest(s, t)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        warmup = self.params.warmup_epochs
        self.loss_scale = min((epoch + 1) / warmup, 1.0) if warmup > 0 else 1.0

    def extra_modules(self) -> list[nn.Module]:
        return [self.review] if self.review is not None else []

    def build(self, setup: Setup) -> None:
        probe = setup.probe
        f_s = [as_map(probe.features[s]) for s in self.s_layers]
        f_t = [as_map(probe.teacher_features[t]) for t in self.t_layers]
        for name, f in [*zip(self.s_layers, f_s), *zip(self.t_layers, f_t)]:
            check_map(name, f)
        self.review = Review([f.shape[1] for f in f_s], [f.shape[1] for f in f_t], self.params.max_mid_channels)

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        f_t = [as_map(ctx.teacher_features[t]) for t in self.t_layers]
        outputs = self.built(self.review)([as_map(ctx.features[s]) for s in self.s_layers], [f.shape[-2:] for f in f_t])
        loss = hcl_loss(outputs, f_t, tuple(self.params.levels))
        return {"loss_reviewkd": self.params.feat_weight * self.loss_scale * loss}
