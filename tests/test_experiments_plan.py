"""Experiment files, the plan of keyed runs, train-or-load, the lock and the shared teacher outputs."""

import json
from pathlib import Path

import pytest

from fixtures_data import make_fashion_mnist
from kdlab.cli import main
from kdlab.errors import ConfigError, KdlabError
from kdlab.experiments.runner import ExperimentRunner, experiment_lock
from kdlab.experiments.config import default_experiment_path, load_experiment_file
from kdlab.experiments.plan import expand, validate

SHIPPED = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")) + [default_experiment_path()]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_experiment_file_is_valid(path):
    exp = load_experiment_file(str(path), [])
    validate(exp)
    plan = expand(exp, data_fingerprint="x")
    roles = {spec.role for spec in plan}
    assert {"baseline", "student"} <= roles
    assert len({spec.cfg.name for spec in plan}) == len(plan), "run directories must be distinct"


def test_default_experiment_covers_the_methods_users_compare():
    exp = load_experiment_file(None, [])
    assert exp.dataset.name == "fashion_mnist" and len(exp.seeds) >= 3 and exp.teachers
    assert len(exp.methods) >= 6 and {"kd", "dkd", "dist", "at", "dml"} <= {m.name for m in exp.methods}
    assert exp.teacher_views == exp.student_schedule.epochs  # FKD: as many fixed views as epochs


def test_bad_experiment_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="'students' is empty"):
        validate(load_experiment_file(str(default_experiment_path()), ["students=[]"]))
    with pytest.raises(ConfigError, match="unknown method 'kdd'"):
        validate(load_experiment_file(str(default_experiment_path()), ["methods=[kdd]"]))
    with pytest.raises(ConfigError, match="needs a teacher"):
        validate(load_experiment_file(str(default_experiment_path()), ["teachers=[]", "methods=[kd]"]))
    with pytest.raises(ConfigError, match="teacher_schedule.epochs"):
        load_experiment_file(str(default_experiment_path()), ["teacher_schedule.epochs=many"])


def test_keys_depend_on_what_determines_the_result():
    exp = load_experiment_file(None, [])
    a = {s.cfg.name: s.key for s in expand(exp, "data1")}
    b = {s.cfg.name: s.key for s in expand(load_experiment_file(None, ["progress=false", "device=cpu"]), "data1")}
    assert a == b
    changed = expand(load_experiment_file(None, ["teacher_schedule.epochs=99"]), "data1")
    assert all(s.key not in a.values() for s in changed if s.teacher_run or s.role == "teacher")
    assert {s.key for s in changed if s.role == "baseline"} <= set(a.values())
    assert not set(a.values()) & {s.key for s in expand(exp, "data2")}


TINY = """
name: tiny
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2}}
seeds: [0, 1]
teachers: [{{name: cnn_small}}]
students: [{{name: cnn_tiny}}]
methods: [kd, {{name: kd, label: kd-T2, T: 2}}, fitnets, dml]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
"""


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp")
    make_fashion_mnist(base / "data", n_train=200, n_test=50)
    path = base / "tiny.yaml"
    path.write_text(TINY.format(out=base / "out", root=base / "data"))
    assert main(["run", str(path)]) == 0
    return base, path


def test_tiny_experiment_runs_reports_and_shares_teacher_outputs(tiny_experiment, capsys):
    base, path = tiny_experiment
    exp_dir = base / "out" / "tiny"
    manifest = json.loads((exp_dir / "manifest.json").read_text())
    assert len(manifest["runs"]) == 1 + 2 * 5  # teacher + per seed: baseline, kd, kd-T2, fitnets, dml
    for run in manifest["runs"]:
        assert (exp_dir / run["run_dir"] / "result.json").is_file()
    stats = json.loads((exp_dir / "summary.json").read_text())["teacher_cache"]
    # per seed, the first logits-only method computes the teacher's outputs and the second reuses them all
    assert stats["computed_batches"] == stats["reused_batches"] > 0 and stats["mismatches"] == 0
    assert not (exp_dir / "teacher_cache").exists() or not any((exp_dir / "teacher_cache").iterdir())
    assert (exp_dir / "report" / "index.html").is_file() and (exp_dir / "report" / "results.csv").is_file()


def test_second_run_loads_everything(tiny_experiment, capsys):
    base, path = tiny_experiment
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    assert "training" not in err and err.count(": done") == 11


def test_lock_refuses_a_second_invocation(tiny_experiment):
    base, path = tiny_experiment
    exp = load_experiment_file(str(path), [])
    with experiment_lock(exp.directory):
        with pytest.raises(KdlabError, match="another kdlab process"):
            ExperimentRunner(exp).run()


def test_eta_uses_the_speed_of_the_same_kind_of_run_and_counts_the_teacher(tmp_path):
    from kdlab.experiments.eta import Eta

    exp = load_experiment_file(None, [f"out_dir={tmp_path}"])
    plan = expand(exp, "data1")
    teacher, baseline, kd = plan[0], plan[1], next(s for s in plan if s.method == "kd")
    dml, at = (next(s for s in plan if s.method == name) for name in ("dml", "at"))
    eta = Eta(shared_teacher_outputs=True)
    assert eta.epoch(kd) is None and eta.left([kd], lambda s: 0) is None  # nothing measured: no guess
    eta.record(teacher, 42.0)
    assert eta.epoch(teacher) == 42.0
    assert eta.epoch(baseline) is None  # the teacher's epoch is no estimate of a student's
    assert eta.left([teacher], lambda s: 0) == 42.0 * exp.teacher_schedule.epochs
    eta.record(baseline, 5.0)
    assert eta.epoch(next(s for s in plan if s.role == "baseline" and s.seed == 2)) == 5.0
    assert eta.epoch(kd) == 5.0  # logits only, served by the shared outputs or the bank: no teacher pass
    assert eta.epoch(at) == pytest.approx(5.0 + 42.0 / 3)  # features: the teacher's forward passes in every step
    assert eta.epoch(dml) == 5.0  # no teacher
    unshared = Eta(shared_teacher_outputs=False)
    unshared.epoch_seconds.update(eta.epoch_seconds)
    assert unshared.epoch(kd) == pytest.approx(5.0 + 42.0 / 3)
    eta.record(kd, 12.0)
    assert eta.epoch(next(s for s in plan if s.method == "kd" and s.seed == 1)) == 12.0
    assert eta.left([kd], lambda s: 1) == 12.0 * (exp.student_schedule.epochs - 1)


def test_a_given_teacher_may_be_a_run_directory(tmp_path):
    (tmp_path / "teacher-run").mkdir()
    (tmp_path / "teacher-run" / "model.safetensors").write_bytes(b"weights")
    for given in (tmp_path / "teacher-run", tmp_path / "teacher-run" / "model.safetensors"):
        exp = load_experiment_file(None, [f"teachers=[{{name: resnet20, checkpoint: {given}}}]"])
        teacher = expand(exp, "data1")[0]
        assert teacher.model_path == tmp_path / "teacher-run" / "model.safetensors" and len(teacher.key) == 12
    with pytest.raises(ConfigError, match="checkpoint not found"):
        expand(load_experiment_file(None, [f"teachers=[{{name: resnet20, checkpoint: {tmp_path}}}]"]), "data1")


TAKD = """
name: takd
out_dir: {out}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 32, val_ratio: 0.2}}
seeds: [0]
teachers: [{{name: cnn_small}}]
assistants: [{{name: cnn_tiny, label: ta, kernel: 3}}]
students: [{{name: cnn_tiny}}]
methods: [kd, {{name: kd, label: takd, via: ta}}]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
"""


def test_takd_chain_teacher_assistant_student(tmp_path):
    make_fashion_mnist(tmp_path / "data", n_train=200, n_test=50)
    path = tmp_path / "takd.yaml"
    path.write_text(TAKD.format(out=tmp_path / "out", root=tmp_path / "data").replace(", kernel: 3", ""))
    exp = load_experiment_file(str(path), [])
    plan = expand(exp, "x")
    roles = [(s.role, s.student, s.method, s.teacher) for s in plan]
    assert roles == [("teacher", "cnn_small", "ce", None), ("assistant", "ta", "kd", "cnn_small"),
                     ("baseline", "cnn_tiny", "ce", None), ("student", "cnn_tiny", "kd", "cnn_small"),
                     ("student", "cnn_tiny", "takd", "ta")]
    assert plan[4].teacher_run is plan[1] and plan[1].teacher_run is plan[0]
    with pytest.raises(ConfigError, match="via 'tb' names no assistant"):
        validate(load_experiment_file(str(path), ["methods=[{name: kd, via: tb}]"]))
    assert main(["run", str(path)]) == 0
    results = json.loads((tmp_path / "out" / "takd" / "report" / "results.json").read_text())
    rows = {r["label"]: r for r in results["rows"]}
    assert {"ta (assistant, kd ← cnn_small)", "takd: ta → cnn_tiny", "kd: cnn_small → cnn_tiny"} <= set(rows)
    assert rows["takd: ta → cnn_tiny"]["teacher_agreement_mean"] is not None
    assert rows["ta (assistant, kd ← cnn_small)"]["teacher_agreement_mean"] is not None


def test_teacher_views_bank_is_computed_once_for_every_method_and_seed(tmp_path):
    make_fashion_mnist(tmp_path / "data", n_train=200, n_test=50)
    path = tmp_path / "views.yaml"
    path.write_text(TINY.format(out=tmp_path / "out", root=tmp_path / "data").replace(
        "methods: [kd, {name: kd, label: kd-T2, T: 2}, fitnets, dml]", "methods: [kd, dist]\nteacher_views: 2"))
    exp = load_experiment_file(str(path), [])
    summary = ExperimentRunner(exp).run()
    stats = summary["teacher_cache"]
    n_train = 160  # 200 minus the 20% validation split
    assert stats["computed_images"] == 2 * n_train  # the two views of every image, once
    assert stats["reused_batches"] == 2 * 2 * (n_train // 32)  # 2 methods x 2 seeds x 1 epoch, every batch
    assert all(s.cfg.dataset.fixed_views == 2 for s in expand(exp, "x") if s.role != "teacher")
    bank = next(p for p in (exp.directory / "teacher_views").iterdir() if (p / "key.json").is_file())
    from kdlab.data import load_splits, make_loader
    from kdlab.models.saved import load_model
    import numpy as np
    import torch

    logits = torch.from_numpy(np.load(bank / "logits.npy"))  # few classes: every logit, fp16 (runs.teacher_bank)
    teacher, _ = load_model(next((exp.directory / "runs").glob("teacher-*")), torch.device("cpu"))
    cfg = expand(exp, "x")[1].cfg.dataset
    splits = load_splits(cfg)
    loader = make_loader(splits.train, splits.info, cfg, train=True, device=torch.device("cpu"), seed=0)
    for k in range(2):
        with torch.no_grad():
            live = torch.cat([teacher(b.images) for b in loader.view_batches(k, 64)])
        torch.testing.assert_close(logits[k].float(), live, atol=2e-2, rtol=1e-2)
