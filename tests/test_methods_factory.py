"""The method factory (names, a+b composites, param validation), the shared forward pass and the feature hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fixtures_methods import make_data, make_student, make_student_other_shapes, make_teacher, student_for
from kdlab.batch import Batch
from kdlab.config import from_dict
from kdlab.errors import ConfigError
from kdlab.methods import METHODS, build_method, method_params_cls, parse_method_params
from kdlab.methods.hooks import FeatureHooks, embedding_layers, match_spatial, pair_deepest, resolve_layers
from kdlab.models import create_model
from kdlab.methods.kd import KDParams, kd_loss


# -- factory ----------------------------------------------------------------------------------------------------------
def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown method 'kdd'; valid methods: .*byot.*fitnets, kd, kd_features"):
        build_method("kdd", {}, make_student(), make_teacher())
    with pytest.raises(ConfigError, match=r"unknown method 'nope'"):
        build_method("kd+nope", {}, make_student(), make_teacher())


@pytest.mark.parametrize("name, params, key", [
    ("kd", {"xyz": 1}, "method.xyz"),
    ("kd", {"T": "hot"}, "method.T"),
    ("at", {"student_layers": {"a": 1}}, "method.student_layers"),
    ("kd+fitnets", {"kd": {"xyz": 1}}, "method.kd.xyz"),
    ("kd+fitnets", {"fitnets.weight": "heavy"}, "method.fitnets.weight"),
    ("kd+fitnets", {"xyz": 1}, "method.xyz"),
])
def test_bad_params_name_their_key(name, params, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        build_method(name, params, make_student(), make_teacher())
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_method_params(name, params)  # validation alone, as the CLI does it


@pytest.mark.parametrize("name, params, key", [
    ("kd", {"alpha": 2.0}, "method.alpha"),
    ("kd+at", {"kd": {"T": 0}}, "method.kd.T"),
    ("fitnets", {"student_layers": ["body.9"]}, "method.student_layers"),
    ("kd+fitnets", {"fitnets": {"teacher_layers": ["fc.nope"]}}, "method.fitnets.teacher_layers"),
    ("dml", {"num_students": 1}, "method.num_students"),
])
def test_bad_values_name_their_key_at_build(name, params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_method(name, params, make_student(), make_teacher())


def test_params_classes_and_defaults():
    assert method_params_cls("kd") is KDParams
    assert parse_method_params("kd", {"T": 2}) == KDParams(T=2.0)
    composite = from_dict(method_params_cls("kd+fitnets"), {"kd": {"T": 3}}, prefix="method.")
    assert composite.kd.T == 3.0 and composite.kd.weight == 1.0 and composite.fitnets.hint_weight == 100.0
    for name in METHODS.list():  # every method builds from defaults
        method = build_method(name, {}, student_for(name), make_teacher())
        assert isinstance(method.params, METHODS.get(name).Params)


def test_combining_requires_composable_parts_and_a_teacher():
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_method("kd+dml", {}, make_student(), make_teacher())
    with pytest.raises(ConfigError, match="names a part twice"):
        build_method("kd+kd", {}, make_student(), make_teacher())
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method("kd", {}, make_student(), None)
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method("byot+kd", {}, make_student(), None)


def test_missing_stage_names_is_a_config_error():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="method.student_layers.*declares no stage_names"):
        build_method("at", {}, plain, make_teacher())
    method = build_method("at", {"student_layers": ["1"], "teacher_layers": ["body.2"]}, plain, make_teacher())
    images, labels = make_data(4)
    assert torch.isfinite(method(Batch(images, labels))["loss_at"])


def test_feature_method_must_be_prepared():
    method = build_method("fitnets", {}, make_student(), make_teacher())
    images, labels = make_data(4)
    with pytest.raises(RuntimeError, match="prepare"):
        method(Batch(images, labels))


def test_prepare_does_not_touch_batchnorm_statistics():
    student = make_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    method = build_method("kd_features", {}, student, make_teacher())
    method.train()
    method.prepare(make_data(4)[0])
    assert student.training
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


# -- composites -------------------------------------------------------------------------------------------------------
def count_calls(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_composite_shares_one_forward_pass_and_counts_ce_once():
    student, teacher = make_student_other_shapes(), make_teacher()
    method = build_method("kd+fitnets+at", {"fitnets": {"weight": 0.5}}, student, teacher)
    images, labels = make_data(8)
    method.prepare(images)
    method.eval()
    s_calls, t_calls = count_calls(student), count_calls(teacher)
    out = method(Batch(images, labels))
    assert s_calls == [1] and t_calls == [1]
    assert set(out) == {"logits", "loss_ce", "loss_kd", "loss_hint", "loss_at"}
    z_s, z_t = student(images), teacher(images)
    torch.testing.assert_close(out["loss_ce"], 0.1 * nn.functional.cross_entropy(z_s, labels))  # min(1 − 0.9, 1, 1)
    torch.testing.assert_close(out["loss_kd"], 0.9 * kd_loss(z_s, z_t, 4.0))
    alone = build_method("fitnets", {}, student, teacher)
    alone.prepare(images)
    alone.regressors.load_state_dict(method.parts["fitnets"].regressors.state_dict())
    torch.testing.assert_close(out["loss_hint"], 0.5 * alone.eval()(Batch(images, labels))["loss_hint"])


def test_composite_registers_extras_and_ce_weight():
    student, teacher = make_student(), make_teacher()
    method = build_method("kd+fitnets", {"ce_weight": 1.0}, student, teacher)
    method.prepare(make_data(4)[0])
    regressor = method.parts["fitnets"].regressors
    ids = {id(p) for p in method.trainable_parameters()}
    assert all(id(p) in ids for p in regressor.parameters())
    assert any(k.startswith("extras.fitnets.") for k in method.trainable_state_dict())
    assert not any(k.startswith(("teacher.", "parts.")) for k in method.trainable_state_dict())
    assert method.ce_weight() == 1.0
    assert method.teacher_layers() == ["body.1"] and method.student_layers() == ["body.1"]


# -- hooks ------------------------------------------------------------------------------------------------------------
def test_feature_hooks_capture_only_inside_the_block():
    model = make_student()
    x = torch.randn(2, 3, 16, 16)
    hooks = FeatureHooks(model, ["body.0", "body.2"])
    with hooks.capture() as feats:
        model(x)
    assert set(feats) == {"body.0", "body.2"} and feats["body.2"].shape == (2, 12, 4, 4)
    torch.testing.assert_close(feats["body.0"], model.body[0](model.stem(x)))
    with hooks.capture() as again:
        model(x[:1])
    assert again["body.0"].shape[0] == 1 and feats["body.0"].shape[0] == 2
    hooks.remove()
    assert not any(m._forward_hooks for m in model.modules())
    with FeatureHooks(model, ["body.1"]) as scoped, scoped.capture() as f:
        model(x)
    assert "body.1" in f and not any(m._forward_hooks for m in model.modules())


def test_feature_hooks_report_layers_not_run():
    model = make_student()
    hooks = FeatureHooks(model, ["fc"])
    with pytest.raises(RuntimeError, match="not called"), hooks.capture():
        model.stem(torch.randn(1, 3, 16, 16))


def test_layer_helpers():
    model = make_student()
    assert resolve_layers(model, [], "method.layers") == ["body.0", "body.1", "body.2"]
    assert resolve_layers(model, ["stem.0"], "method.layers") == ["stem.0"]
    assert pair_deepest(["a", "b", "c"], ["w", "x", "y", "z"]) == (["a", "b", "c"], ["x", "y", "z"])
    a, b = match_spatial(torch.ones(1, 2, 8, 6), torch.ones(1, 3, 4, 12))
    assert a.shape == (1, 2, 4, 6) and b.shape == (1, 3, 4, 6)


def test_hooked_model_can_be_copied_without_crosstalk():
    import copy
    import pickle

    model = make_student()
    hooks = FeatureHooks(model, ["body.2"])
    clone = copy.deepcopy(model)
    pickle.dumps(model)
    x = torch.randn(2, 3, 16, 16)
    with hooks.capture() as feats:
        model(x)
        clone(x[:1])  # e.g. an EMA copy run inside the same forward: must not overwrite the original's features
    assert feats["body.2"].shape[0] == 2


def test_prepare_is_idempotent():
    method = build_method("fitnets", {}, make_student(), make_teacher())
    images = make_data(4)[0]
    method.prepare(images)
    first = method.regressors
    method.prepare(images)
    assert method.regressors is first


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_small"])
def test_embedding_is_read_before_the_classifiers_dropout(name):
    # The student trains with dropout, the teacher is in eval: the embedding methods (rkd, pkt, cc, crd, reviewkd)
    # must read the pooled feature before the dropout, or the student's side alone would be masked.
    model = create_model(name, num_classes=10, small_input=True, dropout=0.9).train()
    [layer] = embedding_layers(model, [], "method.student_layers")
    assert layer == model.pre_logits_name and not layer.endswith(":input")
    images = torch.randn(2, 3, 32, 32)
    hooks = FeatureHooks(model, [layer])
    features = []
    for p in (0.9, 0.0):
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
        torch.manual_seed(0)  # the same stochastic depth in both passes
        with hooks.capture() as feats:
            model(images)
        features.append(feats[layer].detach().clone())
    torch.testing.assert_close(features[0], features[1])  # the dropout masked nothing it read
