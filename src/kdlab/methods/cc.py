"""``cc``: correlation congruence (Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang 2019, "Correlation Congruence for
Knowledge Distillation", ICCV).

Besides matching instances, match the correlations between instances. The penultimate embeddings of both networks go
through a linear embedding to ``feat_dim`` = 128 dims (trained with the student, discarded afterwards), and the loss is
computed as RepDistiller's ``Correlation`` computes it (code the authors shared with RepDistiller's author: consecutive
images of the batch are paired, a first-order stand-in for the paper's kernel correlation matrix):

    e_s = W_s f_s + b_s,  e_t = W_t f_t + b_t,  δ_i = |e_s,i − e_t,i|              (element-wise, 128-d)
    L   = CE(y, p_s) + feat_weight · mean_{i=1..N−1} Σ_d δ_i,d · δ_{i+1},d

Defaults as RepDistiller (distiller_zoo/CC.py; train_student.py: ``LinearEmbed(feat[-1], feat_dim=128)`` for student and
teacher, both trained; scripts/run_cifar_distill.sh: ``-b 0.02``): feat_weight = 0.02, feat_dim = 128, CE weight 1, on
the penultimate embedding before any dropout (``"<classifier>:input"`` or the model's ``pre_logits_name``; override with
``student_layers``/``teacher_layers``, one pair). mdistiller has no CC. The teacher's embedding layer is trainable, as
in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from kdlab.methods.base import Context, Setup, check_param
from kdlab.methods.fp32 import fp32
from kdlab.methods.paired import PairedMethod, PairedParams
from kdlab.methods.registry import METHODS


@fp32
def cc_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """mean over consecutive image pairs (i, i+1) of Σ_d |δ_i,d|·|δ_{i+1},d|, δ = e_s − e_t; fp32."""
    delta = (student_embedding.flatten(1) - teacher_embedding.flatten(1)).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@dataclass
class CCParams(PairedParams):
    student_layers: list[str] = field(default_factory=list)  # default: the classifier's input (the embedding)
    teacher_layers: list[str] = field(default_factory=list)  # default: the teacher classifier's input
    feat_weight: float = 0.02  # (RepDistiller's -b)
    feat_dim: int = 128  # width of the linear embeddings


@METHODS.register("cc")
class CC(PairedMethod):
    Params = CCParams
    params: CCParams
    layer_default = "embedding"
    needs_prepare = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, params: CCParams | None = None) -> None:
        super().__init__(student, teacher, params)
        p = self.params
        check_param(len(self.s_layers) == 1, "student_layers", f"must name one layer, got {self.s_layers}")
        check_param(p.feat_weight >= 0, "feat_weight", f"must be >= 0, got {p.feat_weight}")
        check_param(p.feat_dim > 0, "feat_dim", f"must be > 0, got {p.feat_dim}")
        self.embed = nn.ModuleDict()

    def extra_modules(self) -> list[nn.Module]:
        return [self.embed]

    def build(self, setup: Setup) -> None:
        probe, dim = setup.probe, self.params.feat_dim
        d_s = probe.features[self.s_layers[0]].flatten(1).shape[1]
        d_t = probe.teacher_features[self.t_layers[0]].flatten(1).shape[1]
        self.embed = nn.ModuleDict({"student": nn.Linear(d_s, dim), "teacher": nn.Linear(d_t, dim)})

    def losses(self, ctx: Context) -> dict[str, Tensor]:
        [(f_s, f_t)] = self.feature_pairs(ctx)
        e_s, e_t = self.embed["student"](f_s.flatten(1)), self.embed["teacher"](f_t.flatten(1))
        return {"loss_cc": self.params.feat_weight * cc_loss(e_s, e_t)}
