"""Golden tests of the methods added for "the methods researchers compare against today": each loss against values
worked out by hand or an independent straightforward (loop / numpy) computation, plus the shared pieces (``:input``
hooks, logit standardization) and CRD's resumable state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures_methods import make_data, make_student, make_student_other_shapes, make_teacher
from kdlab.batch import Batch
from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.methods.cc import cc_loss
from kdlab.methods.crd import contrast_exp_scores, crd_nce_loss, momentum_update, sample_contrast_indices
from kdlab.methods.ctkd import GlobalTemperature, curriculum_lambda
from kdlab.methods.dist import dist_loss
from kdlab.methods.dkd import dkd_loss
from kdlab.methods.hooks import FeatureHooks, classifier_name, embedding_layers, layer_pairs
from kdlab.methods.kd import kd_loss
from kdlab.methods.logits import standardize
from kdlab.methods.mlkd import mlkd_loss
from kdlab.methods.nst import nst_loss
from kdlab.methods.pkt import pkt_loss
from kdlab.methods.reviewkd import hcl_loss
from kdlab.methods.rkd import rkd_loss
from kdlab.methods.sp import sp_loss
from kdlab.methods.vid import VIDHead, vid_loss


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d * d, d - 0.5).mean())


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def logits_pair(n: int = 6, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return randn(n, k, seed=seed), 3.0 * randn(n, k, seed=seed + 100)


# -- hooks: module inputs, the classifier, layer pairs ----------------------------------------------------------------
def test_input_hook_reads_the_classifier_input():
    model = make_student().eval()
    x = randn(2, 3, 16, 16)
    hooks = FeatureHooks(model, ["fc:input", "fc"])
    with hooks.capture() as feats:
        logits = model(x)
    pooled = F.adaptive_avg_pool2d(model.body(model.stem(x)), 1).flatten(1)
    torch.testing.assert_close(feats["fc:input"], pooled)
    torch.testing.assert_close(feats["fc"], logits)
    hooks.remove()


def test_classifier_and_embedding_defaults():
    model = make_student()
    assert classifier_name(model, "k") == "fc"
    assert embedding_layers(model, [], "method.student_layers") == ["fc:input"]
    assert embedding_layers(model, ["body.2"], "method.student_layers") == ["body.2"]
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    assert classifier_name(seq, "k") == "3"  # the last Linear
    with pytest.raises(ConfigError, match="no nn.Linear classifier"):
        classifier_name(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), "method.student_layers")
    with pytest.raises(ConfigError, match="no submodule 'nope:input'"):
        embedding_layers(model, ["nope:input"], "method.student_layers")


def test_layer_pairs_defaults_and_overrides():
    s, t = make_student_other_shapes(), make_teacher()  # 4 stages vs 3
    assert layer_pairs(s, t, [], [], "stages") == (["body.1", "body.2", "body.3"], ["body.0", "body.1", "body.2"])
    assert layer_pairs(s, t, [], [], "last") == (["body.3"], ["body.2"])
    assert layer_pairs(s, t, [], [], "embedding") == (["fc:input"], ["fc:input"])
    assert layer_pairs(s, t, ["body.0"], ["body.1"], "embedding") == (["body.0"], ["body.1"])
    with pytest.raises(ConfigError, match="method.teacher_layers"):
        layer_pairs(s, t, ["body.0", "body.1"], [], "last")


def test_embedding_methods_work_on_a_plain_sequential_student():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(5, 4))
    images, labels = make_data(8)
    for name in ["rkd", "pkt", "cc", "crd"]:
        method = build_method(name, {}, plain, make_teacher())
        assert method.student_layers() == ["4:input"]
        method.prepare(images, num_samples=8)
        out = method(Batch(images, labels, index=torch.arange(8)))
        assert all(torch.isfinite(v) for k, v in out.items() if k.startswith("loss_")), name


# -- logit standardization --------------------------------------------------------------------------------------------
def test_standardize_by_hand():
    # mean 2, unbiased std 1: (z − 2) / (1 + 1e-7)
    expected = torch.tensor([[-1.0, 0.0, 1.0]]) / (1 + 1e-7)
    torch.testing.assert_close(standardize(torch.tensor([[1.0, 2.0, 3.0]])), expected)
    z = randn(4, 7)
    # invariant to a per-row shift and a positive scale
    torch.testing.assert_close(standardize(3.0 * z + 5.0), standardize(z), rtol=1e-5, atol=1e-5)


def method_losses(name: str, params: dict, student, teacher, images, labels) -> dict:
    method = build_method(name, params, student, teacher).eval()
    return {k: v for k, v in method(Batch(images, labels)).items() if k.startswith("loss_")}


def test_logit_standardization_off_keeps_and_on_standardizes():
    teacher, student = make_teacher().eval(), make_student().eval()
    images, labels = randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    z_s, z_t = student(images).detach(), teacher(images).detach()
    zs_std, zt_std = standardize(z_s), standardize(z_t)
    for switch, (a, b) in [(False, (z_s, z_t)), (True, (zs_std, zt_std))]:
        on = {"logit_standardization": switch}
        got = method_losses("kd", on, student, teacher, images, labels)
        torch.testing.assert_close(got["loss_kd"], 0.9 * kd_loss(a, b, 4.0))
        got = method_losses("dkd", {**on, "warmup_epochs": 0}, student, teacher, images, labels)
        torch.testing.assert_close(got["loss_dkd"], dkd_loss(a, b, labels, 1.0, 8.0, 4.0))
        got = method_losses("dist", on, student, teacher, images, labels)
        inter, intra = dist_loss(a, b, 2.0, 2.0, 4.0)  # the defaults: beta = gamma = 2, tau = 4
        torch.testing.assert_close(got["loss_dist_inter"], inter)
        torch.testing.assert_close(got["loss_dist_intra"], intra)
        got = method_losses("mlkd", on, student, teacher, images, labels)
        expected = mlkd_loss(z_s, z_t, [2.0, 3.0, 4.0, 5.0, 6.0], 0.9, switch)
        torch.testing.assert_close(got["loss_mlkd_instance"], expected["instance"])
    # default off: exactly the raw-logit values
    assert not build_method("kd", {}, student, teacher).params.logit_standardization


def test_paper_kd_setting_as_a_composite_with_ce():
    teacher, student = make_teacher().eval(), make_student().eval()
    images, labels = randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    params = {"kd": {"logit_standardization": True, "T": 2.0}, "kd.weight": 10.0}
    got = method_losses("kd+ce", params, student, teacher, images, labels)
    z_s, z_t = student(images).detach(), teacher(images).detach()
    torch.testing.assert_close(got["loss_ce"], 0.1 * F.cross_entropy(z_s, labels))
    torch.testing.assert_close(got["loss_kd"], 9.0 * kd_loss(standardize(z_s), standardize(z_t), 2.0))


# -- rkd --------------------------------------------------------------------------------------------------------------
def np_rkd(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    def dist(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        return d / d[d > 0].mean()

    def ang(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out

    return np_smooth_l1(dist(s), dist(t)), np_smooth_l1(ang(s), ang(t))


def test_rkd_loss_against_loops():
    s, t = randn(5, 3), randn(5, 4, seed=1) * 2
    d, a = rkd_loss(s, t)
    nd, na = np_rkd(s.numpy().astype(np.float64), t.numpy().astype(np.float64))
    assert d.item() == pytest.approx(nd, rel=1e-4)
    assert a.item() == pytest.approx(na, rel=1e-4)


def test_rkd_is_zero_for_a_scaled_copy():
    # distances are normalized by their mean and angles are scale-free: a scaled, shifted copy matches exactly
    t = randn(6, 3)
    d, a = rkd_loss(2.5 * t + 1.0, t)
    assert d.item() < 1e-6 and a.item() < 1e-6


def test_rkd_method_weights():
    method = build_method("rkd", {"distance_weight": 2.0, "angle_weight": 3.0}, make_student(), make_teacher())
    f_s, f_t = randn(4, 12), randn(4, 24, seed=1)
    ctx = context({"fc:input": f_s}, {"fc:input": f_t})
    d, a = rkd_loss(f_s, f_t)
    out = method.losses(ctx)
    torch.testing.assert_close(out["loss_rkd_distance"], 2.0 * d)
    torch.testing.assert_close(out["loss_rkd_angle"], 3.0 * a)


def context(features: dict, teacher_features: dict, n: int = 4):
    from kdlab.methods.base import Context

    labels = torch.arange(n) % 4
    return Context(batch=Batch(torch.zeros(n, 3, 16, 16), labels, index=torch.arange(n)), logits=torch.zeros(n, 4),
                   features=features, teacher_features=teacher_features)


# -- pkt --------------------------------------------------------------------------------------------------------------
def np_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def prob(f):
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = prob(s), prob(t)
    return float((pt * np.log((pt + eps) / (ps + eps))).mean())


def test_pkt_loss_against_numpy_and_zero_on_equal():
    s, t = randn(5, 6), randn(5, 9, seed=1)
    assert pkt_loss(s, t).item() == pytest.approx(np_pkt(s.numpy(), t.numpy()), rel=1e-4)
    assert abs(pkt_loss(t, t).item()) < 1e-7
    assert abs(pkt_loss(3 * t, t).item()) < 1e-7  # cosine kernel: scale-free


# -- sp ---------------------------------------------------------------------------------------------------------------
def test_sp_loss_by_hand():
    # G_s = I (rows already unit); G_t = all ones -> rows (1/√2, 1/√2); ‖G_t − G_s‖² = 2·((1/√2 − 1)² + ½) over N² = 4
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sp_loss(s, t).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # maps are flattened per image; channel counts may differ
    fs, ft = randn(3, 2, 4, 4), randn(3, 5, 2, 2, seed=1)
    gs, gt = fs.flatten(1) @ fs.flatten(1).t(), ft.flatten(1) @ ft.flatten(1).t()
    gs, gt = gs / gs.norm(dim=1, keepdim=True), gt / gt.norm(dim=1, keepdim=True)
    assert sp_loss(fs, ft).item() == pytest.approx(((gt - gs) ** 2).sum().item() / 9, rel=1e-5)


# -- nst --------------------------------------------------------------------------------------------------------------
def np_nst(s: np.ndarray, t: np.ndarray) -> float:
    def norm(f):
        f = f.reshape(f.shape[0], f.shape[1], -1)
        return f / np.linalg.norm(f, axis=2, keepdims=True)

    s, t = norm(s), norm(t)

    def k(a, b):
        return np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(len(a)) for i in range(a.shape[1])
                        for j in range(b.shape[1])])

    return k(t, t) + k(s, s) - 2 * k(s, t)


def test_nst_loss_by_hand_and_against_loops():
    # one channel each, orthogonal patterns: k(t,t) = k(s,s) = 1, k(s,t) = 0 -> MMD² = 2
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 3.0]]]])
    assert nst_loss(s, t).item() == pytest.approx(2.0)
    fs, ft = randn(2, 3, 2, 2), randn(2, 5, 4, 4, seed=1)  # the teacher map is pooled 4×4 -> 2×2
    pooled = ft.numpy().reshape(2, 5, 2, 2, 2, 2).mean(axis=(3, 5))
    assert nst_loss(fs, ft).item() == pytest.approx(np_nst(fs.numpy(), pooled), rel=1e-4)
    assert abs(nst_loss(ft, ft).item()) < 1e-6


# -- vid --------------------------------------------------------------------------------------------------------------
def test_vid_loss_by_hand():
    alpha = torch.full((2,), math.log(math.expm1(5.0 - 1e-5)))  # σ² = softplus(α) + 1e-5 = 5
    target = randn(3, 2, 4, 4)
    assert vid_loss(target, target, alpha).item() == pytest.approx(0.5 * math.log(5.0), rel=1e-5)
    assert vid_loss(target + 1.0, target, alpha).item() == pytest.approx(0.5 * (1 / 5 + math.log(5.0)), rel=1e-5)


def test_vid_head_starts_at_the_initial_variance_and_pools_first():
    head = VIDHead(3, 4, init_pred_var=5.0, eps=1e-5)
    torch.testing.assert_close(F.softplus(head.alpha) + 1e-5, torch.full((4,), 5.0))
    assert len([m for m in head.regressor if isinstance(m, torch.nn.Conv2d)]) == 3
    s, t = randn(2, 3, 8, 8), randn(2, 4, 4, 4, seed=1)
    expected = vid_loss(head.regressor(F.avg_pool2d(s, 2)), t, head.alpha, 1e-5)
    torch.testing.assert_close(head(s, t, 1e-5), expected)


# -- cc ---------------------------------------------------------------------------------------------------------------
def test_cc_loss_by_hand():
    # δ = |e_s − e_t| = [[1, 2], [3, 4], [0, 1]]; consecutive products: 1·3 + 2·4 = 11, 3·0 + 4·1 = 4; mean 7.5
    e_t = torch.zeros(3, 2)
    e_s = torch.tensor([[1.0, -2.0], [3.0, 4.0], [0.0, -1.0]])
    assert cc_loss(e_s, e_t).item() == pytest.approx(7.5)


# -- reviewkd ---------------------------------------------------------------------------------------------------------
def test_hcl_loss_by_hand():
    fs, ft = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # h = 2: levels 4 and 2 are skipped, level 1 weighs ½: (7.5 + ½·2.5²) / 1.5
    assert hcl_loss([fs], [ft]).item() == pytest.approx((7.5 + 0.5 * 6.25) / 1.5)
    # a 1×1 map: plain MSE; pairs are summed
    one_s, one_t = torch.zeros(2, 3, 1, 1), torch.ones(2, 3, 1, 1)
    assert hcl_loss([fs, one_s], [ft, one_t]).item() == pytest.approx((7.5 + 0.5 * 6.25) / 1.5 + 1.0)


def test_hcl_loss_against_numpy_pyramid():
    fs, ft = randn(2, 3, 8, 8), randn(2, 3, 8, 8, seed=1)
    a, b = fs.numpy(), ft.numpy()

    def pool(x, size):
        r = 8 // size
        return x.reshape(2, 3, size, r, size, r).mean(axis=(3, 5))

    terms = [((a - b) ** 2).mean()] + [((pool(a, s) - pool(b, s)) ** 2).mean() for s in (4, 2, 1)]
    expected = (terms[0] + terms[1] / 2 + terms[2] / 4 + terms[3] / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    assert hcl_loss([fs], [ft]).item() == pytest.approx(float(expected), rel=1e-5)


def test_reviewkd_levels_shapes_and_warmup():
    student, teacher = make_student_other_shapes(), make_teacher()
    method = build_method("reviewkd", {"warmup_epochs": 4}, student, teacher)
    assert method.student_layers() == ["body.1", "body.2", "body.3", "fc:input"]
    assert method.teacher_layers() == ["body.0", "body.1", "body.2", "fc:input"]
    images, labels = make_data(4)
    method.prepare(images)
    abfs = method.review.abfs
    assert [a.att is not None for a in abfs] == [True, True, True, False]  # the deepest level fuses nothing
    assert abfs[0].conv1[0].out_channels == min(512, 10)  # the student's embedding width
    ctx = method.shared_pass().run(Batch(images, labels))
    outs = method.review([ctx.features[s] if ctx.features[s].dim() == 4 else ctx.features[s][..., None, None]
                          for s in method.s_layers], [(16, 16), (8, 8), (4, 4), (1, 1)])
    assert [tuple(o.shape[1:]) for o in outs] == [(12, 16, 16), (16, 8, 8), (24, 4, 4), (24, 1, 1)]
    scales = []
    for epoch in range(6):
        method.on_epoch_start(epoch, 6)
        scales.append(method.loss_scale)
    assert scales == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


# -- crd --------------------------------------------------------------------------------------------------------------
def test_crd_nce_loss_by_hand_and_against_numpy():
    # K = 1 negative, N = 2 rows: K/N = ½; P = ½ for both: −(log(½ / 1) + log(½ / 1)) = 2·ln 2
    assert crd_nce_loss(torch.tensor([[0.5, 0.5]]), 2).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    p = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) * 4
    n, c, eps = 50, 5 / 50, 1e-7
    pn = p.numpy().astype(np.float64)
    expected = -(np.log(pn[:, 0] / (pn[:, 0] + c + eps)).sum() + np.log(c / (pn[:, 1:] + c + eps)).sum()) / 3
    assert crd_nce_loss(p, n).item() == pytest.approx(expected, rel=1e-5)


def test_crd_scores_gather_the_sampled_rows():
    anchors, bank = F.normalize(randn(2, 4), dim=1), F.normalize(randn(7, 4, seed=1), dim=1)
    rows = torch.tensor([[3, 0, 6, 6], [5, 1, 2, 5]])
    got = contrast_exp_scores(anchors, bank, rows, 0.07)
    expected = torch.stack([torch.stack([torch.exp(anchors[b] @ bank[r] / 0.07) for r in rows[b]]) for b in range(2)])
    torch.testing.assert_close(got, expected)


def test_crd_negatives_avoid_the_anchor_class_and_follow_the_global_rng():
    index, labels = torch.tensor([0, 5]), torch.tensor([0, 1])
    row_labels = torch.arange(10) % 2  # rows 0, 2, .. class 0; 1, 3, .. class 1
    torch.manual_seed(3)
    rows = sample_contrast_indices(index, 10, 2000, labels, row_labels)
    torch.manual_seed(3)
    again = sample_contrast_indices(index, 10, 2000, labels, row_labels)
    assert torch.equal(rows, again) and rows.shape == (2, 2001)
    assert rows[:, 0].tolist() == [0, 5]
    assert not (row_labels[rows[:, 1:]] == labels[:, None]).any()  # never the anchor's class
    assert set(rows[0, 1:].tolist()) == {1, 3, 5, 7, 9} and set(rows[1, 1:].tolist()) == {0, 2, 4, 6, 8}
    counts = torch.bincount(rows[0, 1:], minlength=10)[1::2].float()
    assert counts.min() > 300 and counts.max() < 500  # uniform over the 5 rows (400 expected each)
    unknown = torch.tensor([0, -1, 0, 1, -1, 1, 0, 1, 0, 1])  # rows not seen yet (−1) count as other classes
    rows = sample_contrast_indices(index, 10, 500, labels, unknown)
    assert set(rows[0, 1:].tolist()) == {1, 3, 4, 5, 7, 9}
    alone = sample_contrast_indices(index[:1], 10, 100, labels[:1], torch.zeros(10, dtype=torch.long))
    assert alone.shape == (1, 101)  # one class only: uniform over all rows
    uniform = sample_contrast_indices(index, 10, 2000)
    assert 0.4 < (row_labels[uniform[:, 1:]] == labels[:, None]).float().mean().item() < 0.6


def test_crd_momentum_update_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    new = momentum_update(bank, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), 0.5)
    torch.testing.assert_close(new, torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 1.0], [0.6, 0.8]]))
    assert bank[0, 1].item() == 0.0  # out of place


def crd_method(teacher, seed: int = 0):
    torch.manual_seed(seed)
    method = build_method("crd", {"nce_k": 64}, make_student(), teacher)
    method.prepare(make_data(8)[0], num_samples=16, num_classes=4)
    return method.train()


def test_crd_z_is_set_once_and_index_is_required():
    teacher = make_teacher()
    method = crd_method(teacher)
    images, labels = make_data(8)
    assert method.head.z.tolist() == [-1.0, -1.0]
    method(Batch(images, labels, index=torch.arange(8)))
    z = method.head.z.clone()
    assert (z > 0).all()
    method(Batch(images, labels, index=torch.arange(8, 16)))
    assert torch.equal(method.head.z, z)
    assert method.head.row_labels[:16].tolist() == (torch.arange(16) % 4).tolist()
    with pytest.raises(ValueError, match="batch.index"):
        method(Batch(images, labels))


def test_crd_state_resumes_exactly():
    teacher = make_teacher()
    method = crd_method(teacher, seed=0)
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
    images, labels = make_data(16)
    for step in range(3):  # banks and Z move away from their initial values
        idx = torch.arange(8) + 8 * (step % 2)
        loss = sum(v for k, v in method(Batch(images[idx], labels[idx], index=idx)).items() if k.startswith("loss_"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = method.trainable_state_dict()
    for key in ["head.bank_student", "head.bank_teacher", "head.z", "head.row_labels", "head.embed_student.weight"]:
        assert key in state, key
    fresh = crd_method(teacher, seed=1)  # other random banks and weights
    fresh.load_trainable_state_dict({k: v.clone() for k, v in state.items()})
    idx = torch.arange(8)
    batch = Batch(images[idx], labels[idx], index=idx)
    rng = torch.get_rng_state()
    expected = method(batch)["loss_crd"]
    torch.set_rng_state(rng)  # the same negatives
    got = fresh(batch)["loss_crd"]
    assert torch.equal(got, expected)
    torch.testing.assert_close(fresh.head.bank_student, method.head.bank_student)


# -- mlkd -------------------------------------------------------------------------------------------------------------
def np_mlkd(s: np.ndarray, t: np.ndarray, temps, w: float) -> dict:
    p1 = np_softmax(t)
    conf, cls = p1.max(1), p1.sum(0)
    m, mc = (conf <= np.percentile(conf, 50)).mean(), (cls <= np.percentile(cls, 50)).mean()
    inst = bat = clas = 0.0
    for T in temps:
        ps, pt = np_softmax(s / T), np_softmax(t / T)
        inst += T * T * (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
        bat += ((pt @ pt.T - ps @ ps.T) ** 2).sum() / len(s)
        clas += ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]
    return {"instance": w * (1 + m) * inst, "batch": w * m * bat, "class": w * mc * clas}


def test_mlkd_loss_against_numpy():
    s, t = logits_pair(7, 5)
    temps = [2.0, 3.0, 4.0, 5.0, 6.0]
    got = mlkd_loss(s, t, temps, 0.9)
    expected = np_mlkd(s.numpy().astype(np.float64), t.numpy().astype(np.float64), temps, 0.9)
    for key in expected:
        assert got[key].item() == pytest.approx(expected[key], rel=1e-4), key


def test_mlkd_median_masks_are_fractions():
    # 4 images with distinct confidences: 2 are <= the median; the loss terms scale by 1 + ½ and ½
    s, t = logits_pair(4, 3)
    one = mlkd_loss(s, t, [1.0], 1.0)
    inst = kd_loss(s, t, 1.0)
    torch.testing.assert_close(one["instance"], 1.5 * inst)
    assert build_method("mlkd", {}, make_student(), make_teacher()).ce_weight() == pytest.approx(0.2)


# -- ctkd -------------------------------------------------------------------------------------------------------------
def test_ctkd_curriculum_matches_the_reference_cosine_decay():
    # the reference's CosineDecay(max 0, min −1, loops 10).get_value(e) = (cos(eπ/10) + 1)/2 − 1 = −λ(e)
    for e in [1, 3, 5, 10, 12]:
        ref = (math.cos(min(e, 10) * math.pi / 10) + 1.0) / 2.0 * (0 - (-1)) + (-1)
        assert curriculum_lambda(e, 10) == pytest.approx(-ref)
    assert curriculum_lambda(1, 10) == pytest.approx(0.0244717, abs=1e-6)
    assert curriculum_lambda(5, 10) == pytest.approx(0.5)
    method = build_method("ctkd", {}, make_student(), make_teacher())
    method.on_epoch_start(0, 240)
    assert method.reversal == pytest.approx(curriculum_lambda(1, 10))


def test_ctkd_temperature_gradient_is_reversed_and_scaled():
    z_s, z_t = logits_pair()
    temp = GlobalTemperature(1.0, 20.0)
    T = temp(0.25)
    assert T.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # 15.62
    kd_loss(z_s, z_t, T).backward()
    theta = torch.tensor(1.0, requires_grad=True)
    kd_loss(z_s, z_t, 1.0 + 20.0 * torch.sigmoid(theta)).backward()
    torch.testing.assert_close(temp.theta.grad, -0.25 * theta.grad)


def test_ctkd_method_is_kd_at_the_learned_temperature():
    teacher, student = make_teacher().eval(), make_student().eval()
    images, labels = randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    got = method_losses("ctkd", {}, student, teacher, images, labels)
    T = 1 + 20 * torch.sigmoid(torch.tensor(1.0))
    z_s, z_t = student(images).detach(), teacher(images).detach()
    torch.testing.assert_close(got["loss_kd"], 0.9 * kd_loss(z_s, z_t, T))
    torch.testing.assert_close(got["loss_ce"], 0.1 * F.cross_entropy(z_s, labels))
