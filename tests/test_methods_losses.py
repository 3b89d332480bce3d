"""Golden tests: each method's loss against values worked out by hand or with an independent numpy formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures_methods import make_student, make_teacher
from kdlab.batch import Batch
from kdlab.methods import build_method
from kdlab.methods.at import at_loss, attention_map
from kdlab.methods.byot import byot_head_loss
from kdlab.methods.base import Context
from kdlab.methods.crd import sample_contrast_indices
from kdlab.methods.dist import DISTParams, dist_loss
from kdlab.methods.dkd import dkd_loss
from kdlab.methods.dml import dml_loss
from kdlab.methods.fitnets import hint_loss
from kdlab.methods.kd import kd_loss


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl_batchmean(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) summed over classes, averaged over rows."""
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


# -- kd ---------------------------------------------------------------------------------------------------------------
def test_kd_loss_by_hand():
    # student uniform over 2 classes; teacher p = (1/4, 3/4) at T = 1:
    # KL = 1/4·ln(1/2) + 3/4·ln(3/2) = 0.1308120
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    assert kd_loss(student, teacher, T=1.0).item() == pytest.approx(0.1308120, abs=1e-6)
    # batchmean: a second row with KL 0 halves the value
    two_rows = torch.cat([teacher, torch.zeros(1, 2)])
    assert kd_loss(torch.zeros(2, 2), two_rows, T=1.0).item() == pytest.approx(0.0654060, abs=1e-6)
    # T scaling: logits ×2 at T = 2 give the same distributions, and the loss is multiplied by T² = 4
    assert kd_loss(student, 2 * teacher, T=2.0).item() == pytest.approx(4 * 0.1308120, abs=1e-5)


def test_kd_loss_against_numpy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 3
    T = 4.0
    expected = T * T * np_kl_batchmean(np_softmax(t.numpy() / T), np_softmax(s.numpy() / T))
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_method_weights_soft_term_by_alpha():
    teacher, student = make_teacher(), make_student()
    method = build_method("kd", {"T": 2.0, "alpha": 0.75}, student, teacher).eval()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out = method(Batch(images, labels))
    z_s, z_t = student(images), teacher(images)
    torch.testing.assert_close(out["loss_kd"], 0.75 * kd_loss(z_s, z_t, 2.0))
    torch.testing.assert_close(out["loss_ce"], 0.25 * torch.nn.functional.cross_entropy(z_s, labels))


# -- at ---------------------------------------------------------------------------------------------------------------
def student_map() -> torch.Tensor:  # 1×2×2×2; mean_c f² = [[1, 0], [0, 2]]
    return torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]]])


def test_attention_map_by_hand():
    # mean over channels of f² = [1, 0, 0, 2]; L2-normalized: [1, 0, 0, 2] / √5
    a = attention_map(student_map())
    torch.testing.assert_close(a, torch.tensor([[1.0, 0.0, 0.0, 2.0]]) / math.sqrt(5.0))
    # |f|^p: signs do not matter, even for odd p
    torch.testing.assert_close(attention_map(-student_map(), p=3.0), attention_map(student_map(), p=3.0))


def test_at_loss_by_hand_with_resize():
    # teacher attention [0, 0, 0, 1]; squared differences: (1/√5)², 0, 0, (2/√5 − 1)²; mean over the 4 positions
    expected = ((1 / math.sqrt(5)) ** 2 + (2 / math.sqrt(5) - 1) ** 2) / 4  # = 0.0527864
    teacher_2x2 = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]])
    assert at_loss(student_map(), teacher_2x2).item() == pytest.approx(expected, abs=1e-6)
    # a 4×4 teacher whose bottom-right 2×2 block is 1 pools (2×2 average) to the same map
    teacher_4x4 = torch.zeros(1, 1, 4, 4)
    teacher_4x4[..., 2:, 2:] = 1.0
    assert at_loss(student_map(), teacher_4x4).item() == pytest.approx(expected, abs=1e-6)
    assert at_loss(teacher_4x4, student_map()).item() == pytest.approx(expected, abs=1e-6)  # either side pools


def test_at_method_sums_stages_times_beta():
    teacher, student = make_teacher(), make_student()
    method = build_method("at", {"beta": 10.0}, student, teacher)
    g = torch.Generator().manual_seed(0)
    feats = {n: torch.randn(2, 3, 4, 4, generator=g) for n in student.stage_names}
    t_feats = {n: torch.randn(2, 5, 8, 8, generator=g) for n in teacher.stage_names}
    ctx = Context(batch=Batch(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)), logits=torch.zeros(2, 4),
                  features=feats, teacher_features=t_feats)
    expected = 10.0 * sum(at_loss(feats[n], t_feats[n]) for n in student.stage_names)  # same names on both tiny nets
    torch.testing.assert_close(method.losses(ctx)["loss_at"], expected)


# -- fitnets ----------------------------------------------------------------------------------------------------------
def test_hint_loss_with_resize_against_numpy():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 2, 2, generator=g)
    teacher = torch.randn(2, 3, 4, 4, generator=g)
    pooled = teacher.numpy().reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2×2 average pooling
    expected = float(((student.numpy() - pooled) ** 2).mean())
    assert hint_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # equal sizes: plain MSE; by hand: ((1 − 0)² + (2 − 4)²) / 2 = 2.5
    assert hint_loss(torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[0.0, 4.0]]]])).item() == pytest.approx(2.5)


# -- byot -------------------------------------------------------------------------------------------------------------
def test_byot_head_loss_against_numpy():
    g = torch.Generator().manual_seed(0)
    head_logits, deep_logits = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    head_feat, deep_feat = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    labels = torch.tensor([0, 4, 2])
    alpha, T, lam = 0.3, 3.0, 0.03
    terms = byot_head_loss(head_logits, head_feat, deep_logits, deep_feat, labels, alpha, T, lam)
    q = np_softmax(head_logits.numpy())
    ce = float(-np.log(q[np.arange(3), labels.numpy()]).mean())
    kl = T * T * np_kl_batchmean(np_softmax(deep_logits.numpy() / T), np_softmax(head_logits.numpy() / T))
    mse = float(((head_feat.numpy() - deep_feat.numpy()) ** 2).mean())
    assert terms["ce"].item() == pytest.approx((1 - alpha) * ce, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(alpha * kl, rel=1e-5)
    assert terms["feat"].item() == pytest.approx(lam * mse, rel=1e-5)


def test_byot_targets_are_detached():
    head_logits, deep_logits = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    head_feat, deep_feat = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    terms = byot_head_loss(head_logits, head_feat, deep_logits, deep_feat, torch.tensor([0, 1]), 0.3, 3.0, 0.03)
    sum(terms.values()).backward()
    assert deep_logits.grad is None and deep_feat.grad is None
    assert head_logits.grad is not None and head_feat.grad is not None


# -- dml --------------------------------------------------------------------------------------------------------------
def test_dml_loss_value_and_kl_direction():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 5, generator=g).requires_grad_()
    z2 = torch.randn(4, 5, generator=g).requires_grad_()
    p1, p2 = np_softmax(z1.detach().numpy()), np_softmax(z2.detach().numpy())
    loss = dml_loss([z1, z2], T=1.0)
    assert loss.item() == pytest.approx(np_kl_batchmean(p2, p1) + np_kl_batchmean(p1, p2), rel=1e-5)
    loss.backward()
    # d KL(p_other ‖ p_self) / d z_self = (p_self − p_other) / N: the other student's output is the (fixed) target
    torch.testing.assert_close(z1.grad, torch.from_numpy((p1 - p2) / 4), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(z2.grad, torch.from_numpy((p2 - p1) / 4), rtol=1e-4, atol=1e-6)


def test_dml_loss_averages_over_the_others():
    zs = [torch.randn(3, 4) for _ in range(3)]
    expected = sum(sum(kd_loss(zs[k], zs[j], 1.0) for j in range(3) if j != k) / 2 for k in range(3))
    torch.testing.assert_close(dml_loss(zs), expected)


# -- dkd --------------------------------------------------------------------------------------------------------------
def test_dkd_decomposes_kd():
    # the paper's identity, per image: KL(p_t ‖ p_s) = TCKD + (1 − p_t[y]) · NCKD (at T = 1, alpha = beta = 1)
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(1, 6, generator=g), torch.randn(1, 6, generator=g), torch.tensor([2])
    p_t = np_softmax(t.numpy())[0]
    tckd = dkd_loss(s, t, y, alpha=1.0, beta=0.0, T=1.0).item()
    nckd = dkd_loss(s, t, y, alpha=0.0, beta=1.0, T=1.0).item()
    assert tckd + (1 - p_t[2]) * nckd == pytest.approx(kd_loss(s, t, 1.0).item(), rel=1e-5)


def test_dkd_loss_against_numpy():
    g = torch.Generator().manual_seed(1)
    s, t, y = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g) * 2, torch.tensor([0, 3, 4])
    T, alpha, beta = 4.0, 1.0, 8.0
    ps, pt = np_softmax(s.numpy() / T), np_softmax(t.numpy() / T)
    rows = np.arange(3)
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    mask = np.ones_like(ps, dtype=bool)
    mask[rows, y.numpy()] = False
    qs, qt = ps[mask].reshape(3, 4), pt[mask].reshape(3, 4)
    qs, qt = qs / qs.sum(1, keepdims=True), qt / qt.sum(1, keepdims=True)
    expected = T * T * (alpha * np_kl_batchmean(bt, bs) + beta * np_kl_batchmean(qt, qs))
    assert dkd_loss(s, t, y, alpha, beta, T).item() == pytest.approx(expected, rel=1e-4)


def mdistiller_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, T: float):
    """megvii-research/mdistiller distillers/DKD.py ``dkd_loss``, equation for equation (softmax probabilities,
    b = [Σ p·gt_mask, Σ p·other_mask], log(b_s); the non-target part with the target logit/T lowered by 1000)."""
    gt = torch.zeros_like(s).scatter_(1, y[:, None], 1).bool()
    p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    b_s = torch.cat([(p_s * gt).sum(1, keepdim=True), (p_s * ~gt).sum(1, keepdim=True)], 1)
    b_t = torch.cat([(p_t * gt).sum(1, keepdim=True), (p_t * ~gt).sum(1, keepdim=True)], 1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T**2 / len(y)
    q_t = F.softmax(t / T - 1000.0 * gt, dim=1)
    log_q_s = F.log_softmax(s / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T**2 / len(y)
    return alpha * tckd + beta * nckd


def loss_and_grad(fn, s: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, *args)
    loss.backward()
    return loss.detach(), s.grad


def test_dkd_matches_mdistiller_loss_and_gradient():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 5
    y = torch.tensor([0, 3, 9, 2, 2, 7])
    s[1, 3] += 60.0  # a lead of 15 T at T = 4: far from saturating the reference in fp32
    for alpha, beta, T in [(1.0, 8.0, 4.0), (2.0, 0.5, 1.0)]:
        want, want_grad = loss_and_grad(mdistiller_dkd, s, t, y, alpha, beta, T)
        got, got_grad = loss_and_grad(dkd_loss, s, t, y, alpha, beta, T)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)


def test_dkd_keeps_its_gradient_where_the_target_logit_leads_far():
    # leads of 40 T (clamping b at 1e-12 cut the gradient from ~28 T) and 120 T (the reference's fp32 Σ_{c≠y} p_c
    # underflows to 0: log 0). kdlab stays finite, non-zero, and equal to the reference computed in float64.
    t = torch.tensor([[2.0, 0.5, -1.0, 0.0], [1.0, 3.0, 0.0, -2.0]])
    y = torch.tensor([0, 1])
    for lead in (40.0, 120.0):
        s = torch.tensor([[lead, 0.0, 0.0, 0.0], [0.0, lead, 0.0, 0.0]])
        got, got_grad = loss_and_grad(dkd_loss, s, t, y, 1.0, 0.0, 1.0)  # the TCKD term alone
        want, want_grad = loss_and_grad(mdistiller_dkd, s.double(), t.double(), y, 1.0, 0.0, 1.0)
        assert torch.isfinite(got_grad).all() and got_grad.abs().max() > 0.1
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-4)
    fp32_reference, _ = loss_and_grad(mdistiller_dkd, s, t, y, 1.0, 0.0, 1.0)
    assert not torch.isfinite(fp32_reference)  # the saturated reference


def test_dkd_warmup_is_linear_over_epochs():
    method = build_method("dkd", {"warmup_epochs": 4}, make_student(), make_teacher())
    scales = []
    for epoch in range(6):
        method.on_epoch_start(epoch, 6)
        scales.append(method.kd_scale)
    assert scales == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


# -- dist -------------------------------------------------------------------------------------------------------------
def test_dist_loss_against_numpy_corrcoef():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    tau = 2.0
    ys, yt = np_softmax(s.numpy() / tau), np_softmax(t.numpy() / tau)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(6)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(5)])
    got_inter, got_intra = dist_loss(s, t, beta=1.0, gamma=3.0, tau=tau)
    assert got_inter.item() == pytest.approx(tau**2 * inter, rel=1e-4)
    assert got_intra.item() == pytest.approx(3.0 * tau**2 * intra, rel=1e-4)
    same_inter, same_intra = dist_loss(t, t)
    assert abs(same_inter.item()) < 1e-5 and abs(same_intra.item()) < 1e-5


def test_dist_defaults_are_the_authors_cifar_runs():
    # dist_cifar.yaml: kd dist_t4 (DIST(beta=1, gamma=1, tau=4)), kd_loss_weight 2, ori_loss_weight 1
    p = DISTParams()
    assert (p.beta, p.gamma, p.tau) == (2.0, 2.0, 4.0)
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    ys, yt = F.softmax(s / 4, dim=1), F.softmax(t / 4, dim=1)

    def rho(a, b):  # the reference's pearson_correlation: cosine similarity of the centred rows, eps 1e-8
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)

    reference = 2 * (4**2 * (1 - rho(ys, yt).mean()) + 4**2 * (1 - rho(ys.t(), yt.t()).mean()))
    inter, intra = dist_loss(s, t, p.beta, p.gamma, p.tau)
    torch.testing.assert_close(inter + intra, reference, rtol=1e-4, atol=1e-5)


# -- crd --------------------------------------------------------------------------------------------------------------
def test_crd_negatives_are_distinct_other_class_rows_as_the_reference():
    # RepDistiller's CIFAR100InstanceSample: np.random.choice(cls_negative[target], K, replace=K > len(cls_negative))
    row_labels = torch.arange(200) % 4
    index, labels = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    rows = sample_contrast_indices(index, 200, 120, labels, row_labels)
    assert rows.shape == (3, 121) and rows[:, 0].tolist() == [0, 1, 2]
    for b in range(3):
        negatives = rows[b, 1:]
        assert len(set(negatives.tolist())) == 120  # without replacement
        assert not (row_labels[negatives] == labels[b]).any()
    counts = torch.zeros(200)
    for _ in range(50):
        drawn = sample_contrast_indices(index[:1], 200, 120, labels[:1], row_labels)[0, 1:]
        counts += torch.bincount(drawn, minlength=200)
    other = counts[row_labels != 0]
    assert counts[row_labels == 0].sum() == 0 and other.min() > 20 and other.max() < 60  # ~40 each: uniform
    # an anchor with fewer than K other-class rows draws with replacement, as the reference then does
    few = torch.tensor([0] * 195 + [1] * 5)
    mixed = sample_contrast_indices(torch.tensor([0, 199]), 200, 100, torch.tensor([1, 0]), few)
    assert len(set(mixed[0, 1:].tolist())) == 100 and set(mixed[1, 1:].tolist()) <= set(range(195, 200))
