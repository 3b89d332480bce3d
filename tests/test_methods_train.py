"""Every registered method (and some a+b composites) trains on a tiny learnable task with tiny teacher/student pairs."""

from __future__ import annotations

import pytest
import torch

from fixtures_methods import (DISTILLED_STUDENT_METHODS, RaisingTeacher, make_data, make_distilled_student,
                              make_student, make_student_other_shapes, student_for, train_teacher)
from kdlab.batch import Batch
from kdlab.methods import METHODS, build_method

COMPOSITES = ["kd+fitnets", "kd+at", "at+kd_features", "kd+crd", "mlkd+reviewkd", "dot+fitnets"]
NAMES = METHODS.list() + COMPOSITES
STUDENTS = {"same_shapes": make_student, "other_shapes": make_student_other_shapes}
# Here every batch is the whole split, so CRD refreshes each memory-bank row at every step (training refreshes a row
# once per epoch): with its momentum 0.5 the banks then move as fast as the weights and the loss oscillates under SGD
# momentum 0.9. A slower bank restores the per-epoch regime of a real run.
TEST_PARAMS = {"crd": {"nce_m": 0.9}}
READS_TEACHER_WEIGHTS = {"wkd"}  # its cost matrix comes from the teacher's classifier weights


def params_for(name: str) -> dict:
    parts = name.split("+")
    if len(parts) == 1:
        return dict(TEST_PARAMS.get(name, {}))
    return {part: dict(TEST_PARAMS[part]) for part in parts if part in TEST_PARAMS}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield train_teacher()
    torch.set_num_threads(threads)


def total(out: dict) -> torch.Tensor:
    return sum(v for k, v in out.items() if k.startswith("loss_"))


def batch(images: torch.Tensor, labels: torch.Tensor, **extra) -> Batch:
    """A batch whose samples are the first ``n`` of a split of ``n`` (CRD reads its memory-bank rows by index)."""
    return Batch(images, labels, index=torch.arange(len(labels)), **extra)


def prepare(method, images: torch.Tensor, n: int) -> None:
    method.prepare(images, num_samples=n, num_classes=4)


@pytest.mark.parametrize("student_kind", sorted(STUDENTS))
@pytest.mark.parametrize("name", NAMES)
def test_method_trains(name, student_kind, teacher):
    torch.manual_seed(0)
    if name in DISTILLED_STUDENT_METHODS:  # a student with a distillation head; one shape is enough
        if student_kind != "same_shapes":
            pytest.skip("a distilled student comes in one shape")
        student = make_distilled_student()
    else:
        student = STUDENTS[student_kind]()
    student_keys = set(student.state_dict())
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = build_method(name, params_for(name), student, teacher)
    images, labels = make_data()
    prepare(method, images[:8], len(images))
    params = method.trainable_parameters()
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in params}
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    method.train()
    assert not teacher.training
    losses = []
    for step in range(20):
        out = method(batch(images, labels))
        loss = total(out)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            extra = [p for m in method.extra_modules() for p in m.parameters()]
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra), "an extra module gets no gradient"
        opt.step()
        losses.append(loss.item())
    assert out["logits"].shape == (len(images), 4)
    assert sum(losses[-3:]) / 3 < losses[0], losses
    assert not teacher.training
    for key, value in teacher.state_dict().items():  # weights and BatchNorm buffers untouched
        assert torch.equal(value, teacher_state[key]), key
    for model in method.students().values():  # adapters, heads and the teacher are not saved with a student
        assert set(model.state_dict()) == student_keys
    assert not any(k.startswith("teacher.") for k in method.trainable_state_dict())


def test_extra_modules_exist_where_expected(teacher):
    images, _ = make_data(8)
    for name, n_extra in [("fitnets", 1), ("kd_features", 1), ("byot", 2), ("kd+fitnets", 1), ("kd", 0), ("at", 0)]:
        method = build_method(name, {}, make_student(), teacher)
        prepare(method, images, len(images))
        assert sum(1 for m in method.extra_modules() for _ in m.parameters()) > 0 if n_extra else True
        state = method.trainable_state_dict()
        if name == "byot":
            assert sum(1 for k in state if k.startswith("heads.") and k.endswith("fc.weight")) == 2  # stages 1 and 2
        if name == "kd":
            assert set(state) == {f"student.{k}" for k in method.student.state_dict()}


@pytest.mark.parametrize("name", NAMES)
def test_losses_are_fp32_under_bf16_autocast(name, teacher):
    method = build_method(name, {}, student_for(name), teacher)
    images, labels = make_data(8)
    prepare(method, images, len(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(batch(images, labels))
    for key, value in out.items():
        if key.startswith("loss_"):
            assert value.dtype == torch.float32 and value.dim() == 0, key


def test_precomputed_teacher_logits_replace_the_teacher(teacher):
    images, labels = make_data(16)
    given = teacher(images).detach()
    checked = []
    for name in METHODS.list():
        live = build_method(name, {}, student_for(name), teacher)
        if not live.needs_teacher or live.teacher_layers():
            continue
        if live.needs_prepare:
            prepare(live, images, len(images))
        live.eval()
        # a method that builds from the teacher (its prepare() probe runs it; wkd reads its classifier weights) is
        # built with it, then given a teacher that must never run
        built_from_teacher = live.needs_prepare or name in READS_TEACHER_WEIGHTS
        offline = build_method(name, {}, live.student, teacher if built_from_teacher else RaisingTeacher())
        if live.needs_prepare:  # the same extra modules: built, then given the live method's weights
            prepare(offline, images, len(images))
            offline.load_trainable_state_dict(live.trainable_state_dict())
        if built_from_teacher:
            offline.teacher = RaisingTeacher()
        offline.eval()
        expected = {k: v for k, v in live(batch(images, labels)).items() if k.startswith("loss_")}
        got = {k: v for k, v in offline(batch(images, labels, teacher_logits=given)).items() if k.startswith("loss_")}
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], msg=f"{name}: {key}")
        checked.append(name)
    assert {"kd", "dkd", "dist", "mlkd", "ctkd", "nkd", "wkd", "dot", "deit", "ofa"} <= set(checked)


def test_dml_students_are_distinct_and_all_saved():
    torch.manual_seed(0)
    student = make_student()
    method = build_method("dml", {"num_students": 3}, student)
    students = method.students()
    assert list(students) == ["student", "student2", "student3"]
    w = [m.body[0][0].weight for m in students.values()]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert len(method.trainable_parameters()) == 3 * len(list(student.parameters()))
    again = build_method("dml", {"num_students": 3}, student)  # same seed -> same copies (reproducible runs)
    torch.testing.assert_close(again.students()["student2"].body[0][0].weight, w[1])
