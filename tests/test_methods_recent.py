"""The methods published since DKD (nkd, uskd, wkd, dot, deit, ofa): each loss against its paper's equation written out
independently here (per-sample loops in float64; value and gradient to 1e-4), DOT's optimizer step against the update
worked out by hand, the students each method accepts, and a short real run of each on a Fashion-MNIST subset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab
from fixtures_methods import TinyDistilledNet, make_data, make_distilled_student, make_student, make_teacher
from kdlab.batch import Batch
from kdlab.config import OptimConfig
from kdlab.engine.optim import PerLossMomentumSGD, build_optimizer
from kdlab.engine.trainer import EngineOptions, train_step
from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.methods.deit import deit_distill_loss
from kdlab.methods.nkd import nkd_loss
from kdlab.methods.ofa import ofa_loss
from kdlab.methods.uskd import uskd_loss
from kdlab.methods.wkd import classifier_cost, wkd_loss

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def inputs(n: int = 5, k: int = 6):
    z_s = randn(n, k, seed=1, scale=2.0).requires_grad_(True)
    z_t = randn(n, k, seed=2, scale=3.0)
    labels = torch.tensor([0, 3, 5, 1, 3][:n])
    return z_s, z_t, labels


def check(ours: torch.Tensor, golden: torch.Tensor, *leaves: torch.Tensor) -> None:
    """Same value and same gradient with respect to ``leaves`` (to 1e-4)."""
    assert abs(ours.item() - golden.item()) < 1e-4, (ours.item(), golden.item())
    g_ours = torch.autograd.grad(ours, leaves, retain_graph=True)
    g_gold = torch.autograd.grad(golden, leaves)
    for a, b in zip(g_ours, g_gold):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)


def others(k: int, y: int) -> list[int]:
    return [c for c in range(k) if c != y]


# -- nkd -------------------------------------------------------------------------------------------------------------
def test_nkd_matches_the_paper():
    z_s, z_t, labels = inputs()
    temp, gamma = 2.0, 1.5
    terms = []
    for n, y in enumerate(labels.tolist()):
        t_y = torch.softmax(z_t[n], 0)[y]
        rest = others(z_s.shape[1], y)
        q_t = torch.softmax(z_t[n, rest] / temp, 0)
        log_q_s = torch.log_softmax(z_s[n, rest] / temp, 0)
        terms.append(-t_y * torch.log_softmax(z_s[n], 0)[y] - gamma * temp ** 2 * (q_t * log_q_s).sum())
    check(nkd_loss(z_s, z_t, labels, temp, gamma), torch.stack(terms).mean(), z_s)


# -- uskd ------------------------------------------------------------------------------------------------------------
def test_uskd_matches_the_paper():
    z, _, labels = inputs()
    w = randn(*z.shape, seed=3).requires_grad_(True)
    alpha, beta, mu = 1.0, 0.1, 0.005
    n, k = z.shape
    p_y = torch.stack([torch.softmax(z[i], 0)[y] for i, y in enumerate(labels.tolist())]).detach()
    batch_mean = (p_y ** 2).mean()
    total = []
    for i, y in enumerate(labels.tolist()):
        log_p = torch.log_softmax(z[i], 0)
        target = -(p_y[i] ** 2 + 1 - batch_mean) * log_p[y]
        smooth = torch.full((k,), 0.1 / k, dtype=torch.float64)
        smooth[y] += 0.9
        weak = -mu * (smooth * torch.log_softmax(w[i], 0)).sum()
        sw, lp = torch.softmax(w[i], 0).detach(), log_p.detach()
        score = [sw[c] / (1 - sw[y] + 1e-6) + lp[c] / (1 - lp[y] + 1e-6) for c in range(k)]
        ranked = sorted(range(k), key=lambda c: -float(score[c]))
        zipf = torch.tensor([1.0 / (ranked.index(c) + 1) for c in others(k, y)], dtype=torch.float64)
        q = zipf / zipf.sum()
        non = -(q * torch.log_softmax(z[i, others(k, y)], 0)).sum()
        total.append(alpha * target + beta * non + weak)
    ours = sum(uskd_loss(z, w, labels, alpha, beta, mu).values())
    check(ours, torch.stack(total).mean(), z, w)


# -- wkd -------------------------------------------------------------------------------------------------------------
def test_wkd_cost_and_loss_match_the_paper():
    z_s, z_t, labels = inputs()
    k = z_s.shape[1]
    weight = randn(k, 4, seed=4)
    cos = torch.tensor([[float(F.cosine_similarity(weight[i], weight[j], dim=0)) for j in range(k)] for i in range(k)],
                       dtype=torch.float64)
    cost = (1 - torch.exp(-(1 - cos))).clamp_min(0) + 1e-8
    torch.testing.assert_close(classifier_cost(weight.float(), 1.0).double(), cost, atol=1e-5, rtol=0)
    T, w, lam, iters = 2.0, 3.0, 0.5, 10
    terms = []
    for n, y in enumerate(labels.tolist()):
        rest = others(k, y)
        a = torch.softmax(z_s[n, rest] / T, 0)
        b = torch.softmax(z_t[n, rest] / T, 0)
        c = cost[rest][:, rest]
        kernel = torch.exp(-c / lam)
        u = torch.full((k - 1,), 1.0 / (k - 1), dtype=torch.float64)
        for _ in range(iters):
            v = b / (kernel.T @ u + 1e-8)
            u = a / (kernel @ v + 1e-8)
        plan = torch.diag(u) @ kernel @ torch.diag(v)
        target = -torch.softmax(z_t[n], 0)[y] * torch.log_softmax(z_s[n], 0)[y]
        terms.append(target + w * (plan * c).sum())
    check(wkd_loss(z_s, z_t, labels, cost, T, w, lam, iters), torch.stack(terms).mean(), z_s)


def test_wkd_uses_the_teacher_classifier_and_decays():
    teacher = make_teacher()
    method = build_method("wkd", {}, make_student(), teacher)
    torch.testing.assert_close(method.cost, classifier_cost(teacher.fc.weight))
    method.on_epoch_start(0, 240)
    assert method.scale == 1.0
    method.on_epoch_start(239, 240)
    assert method.scale == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="method.classifier"):
        build_method("wkd", {"classifier": "nope"}, make_student(), teacher)


# -- deit ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_deit_matches_the_paper(kind):
    torch.manual_seed(0)
    student, teacher = make_distilled_student().double(), make_teacher().double().eval()
    alpha, tau = 0.3, 2.0
    method = build_method("deit", {"distillation_type": kind, "alpha": alpha, "tau": tau}, student, teacher)
    images, labels = make_data(6)
    images = images.double()
    out = method(Batch(images, labels))
    ours = sum(v for key, v in out.items() if key.startswith("loss_"))
    f = F.adaptive_avg_pool2d(student.body(student.stem(images)), 1).flatten(1)
    z_cls, z_dist, z_t = student.head(f), student.head_dist(f), teacher(images).detach()
    terms = []
    for n, y in enumerate(labels.tolist()):
        ce = -torch.log_softmax(z_cls[n], 0)[y]
        if kind == "hard":
            dist = -torch.log_softmax(z_dist[n], 0)[int(z_t[n].argmax())]
        else:  # Σ p_t (log p_t − log p_d) τ², divided by N·K as the reference code
            p_t = torch.softmax(z_t[n] / tau, 0)
            dist = (p_t * (p_t.log() - torch.log_softmax(z_dist[n] / tau, 0))).sum() * tau ** 2 / z_t.shape[1]
        terms.append((1 - alpha) * ce + alpha * dist)
    leaves = [student.head.weight, student.head_dist.weight]
    check(ours, torch.stack(terms).mean(), *leaves)
    soft = deit_distill_loss(z_dist, z_t, "soft", tau, "batch")
    numel = deit_distill_loss(z_dist, z_t, "soft", tau, "numel")
    assert soft.item() == pytest.approx(numel.item() * z_t.shape[1])


def test_deit_needs_a_distillation_head():
    with pytest.raises(ConfigError, match="head") as info:
        build_method("deit", {}, make_student(), make_teacher())
    assert "\n" not in str(info.value) and "distilled" in str(info.value)


# -- ofa -------------------------------------------------------------------------------------------------------------
def test_ofa_loss_matches_the_paper():
    z_s, z_t, labels = inputs()
    eps, T = 1.5, 2.0
    terms = []
    for n, y in enumerate(labels.tolist()):
        p_t = torch.softmax(z_t[n] / T, 0)
        onehot = F.one_hot(torch.tensor(y), z_s.shape[1]).double()
        terms.append(-(((p_t + onehot) ** eps - onehot) * torch.log_softmax(z_s[n] / T, 0)).sum())
    check(ofa_loss(z_s, z_t, labels, eps, T), torch.stack(terms).mean(), z_s)
    p_t = torch.softmax(z_t, 1)  # eps = 1: cross-entropy with the teacher's soft labels
    plain = -(p_t * torch.log_softmax(z_s, 1)).sum(1).mean()
    assert ofa_loss(z_s, z_t, labels, 1.0).item() == pytest.approx(plain.item())


class TinyViT(nn.Module):
    """Patch embedding, a class token and token-wise blocks: stages output N×L×C sequences (as a ViT's blocks)."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
                                      for _ in range(3)])
        self.head = nn.Linear(dim, num_classes)
        self.stage_names = ("blocks.0", "blocks.1", "blocks.2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


@pytest.mark.parametrize("student_fn", [make_student, TinyViT], ids=["cnn", "vit"])
def test_ofa_builds_branches_for_maps_and_tokens(student_fn):
    torch.manual_seed(0)
    method = build_method("ofa", {"eps": [1.5]}, student_fn(), make_teacher().eval())
    images, labels = make_data(16)
    method.prepare(images[:4], num_classes=4)
    assert len(method.branches) == 3
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        out = method(Batch(images, labels))
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in method.branches.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="method.eps"):
        build_method("ofa", {"eps": [1.0, 2.0]}, student_fn(), make_teacher())


# -- dot: the per-loss momentum SGD through the engine train_step -----------------------------------------------------
class TwoLosses(nn.Module):
    """θ (both losses) and φ (the CE only); the gradients of the two loss terms are the given constants per step."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.phi = nn.Parameter(torch.tensor([0.5]))
        self.g_ce, self.g_kd, self.h_ce = torch.zeros(2), torch.zeros(2), torch.zeros(1)

    def forward(self, batch: Batch) -> dict:
        return {"logits": torch.zeros(len(batch), 2), "loss_ce": (self.g_ce * self.theta).sum() +
                (self.h_ce * self.phi).sum(), "loss_kd": (self.g_kd * self.theta).sum()}


def test_per_loss_momenta_follow_dot():
    lr, beta, delta, wd = 0.1, 0.9, 0.075, 0.01
    model = TwoLosses()
    cfg = OptimConfig(name="sgd", lr=lr, momentum=beta, nesterov=False, weight_decay=wd)
    optimizer = build_optimizer(model.parameters(), cfg, {"loss_ce": -delta, "*": delta})
    assert isinstance(optimizer, PerLossMomentumSGD)
    opt = EngineOptions(epochs=1, optim=cfg, device=torch.device("cpu"))
    batch = Batch(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    theta, phi = model.theta.detach().clone(), model.phi.detach().clone()
    b_ce = b_kd = c_phi = None
    for step in range(3):
        model.g_ce, model.g_kd = randn(2, seed=10 + step).float(), randn(2, seed=20 + step).float()
        model.h_ce = randn(1, seed=30 + step).float()
        d_ce, d_kd, d_phi = model.g_ce + wd * theta, model.g_kd, model.h_ce + wd * phi  # decay enters the CE term
        b_ce = d_ce if b_ce is None else (beta - delta) * b_ce + d_ce
        b_kd = d_kd if b_kd is None else (beta + delta) * b_kd + d_kd
        c_phi = d_phi if c_phi is None else beta * c_phi + d_phi  # reached by one loss only: momentum beta
        theta, phi = theta - lr * (b_ce + b_kd), phi - lr * c_phi
        train_step(model, optimizer, batch, opt)
        torch.testing.assert_close(model.theta.detach(), theta)
        torch.testing.assert_close(model.phi.detach(), phi)


def test_dot_declares_its_groups_and_needs_sgd():
    method = build_method("dot", {"delta": 0.05}, make_student(), make_teacher())
    assert method.loss_groups() == {"loss_ce": -0.05, "*": 0.05}
    assert build_method("kd", {}, make_student(), make_teacher()).loss_groups() == {}
    assert build_method("dot+fitnets", {}, make_student(), make_teacher()).loss_groups() == {"loss_ce": -0.075,
                                                                                             "*": 0.075}
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(method.student.parameters(), OptimConfig(name="adamw"), method.loss_groups())


# -- a short real run of each on a Fashion-MNIST subset ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed")
    data = {"name": "fashion_mnist", "root": str(REAL_FASHION), "batch_size": 32, "train_subset": 2000,
            "test_subset": 300}
    common = {"device": "cpu", "progress": False, "out_dir": str(tmp_path_factory.mktemp("recent")), "epochs": 3}
    teacher = kdlab.train("cnn_tiny", data, name="teacher", **{**common, "epochs": 5})
    return data, common, teacher


@pytest.mark.parametrize("method", ["nkd", "uskd", "wkd", "dot", "deit", "ofa"])
def test_trains_above_chance_on_fashion_mnist(method, fashion):
    data, common, teacher = fashion
    torch.manual_seed(0)
    model = TinyDistilledNet((8, 16, 32), (1, 2, 2), num_classes=10, in_channels=1) if method == "deit" else "cnn_tiny"
    kwargs = {} if method == "uskd" else {"teacher": teacher}
    run = kdlab.train(model, data, method=method, name=method, **kwargs, **common)
    assert run.metrics["test_top1"] > 40.0, run.metrics  # chance: 10%


def test_cli_lists_the_new_methods():
    out = subprocess.run([sys.executable, "-m", "kdlab", "list", "methods"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert {"deit", "dot", "nkd", "uskd", "wkd", "ofa"} <= set(out.stdout.split())
