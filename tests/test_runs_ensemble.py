"""Several teachers as one (kdlab.runs.ensemble): the combined logits, distillation from a list of teachers from the
CLI, the API and an experiment file, and the run key that follows every member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import kdlab
from kdlab.cli import main
from kdlab.config import TrainConfig, from_dict
from kdlab.errors import ConfigError
from kdlab.methods import build_method
from kdlab.runs.ensemble import EnsembleTeacher, ensemble_logits
from kdlab.runs.identity import resolve_config


def _data(root) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "batch_size": 50}


def _common(tmp_path) -> dict:
    return {"epochs": 1, "out_dir": str(tmp_path), "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, fmnist):
    """Two tiny teachers trained one epoch each on the 200-image fixture (a few seconds)."""
    out = tmp_path_factory.mktemp("teachers")
    return [kdlab.train("cnn_tiny", _data(fmnist), epochs=1, out_dir=str(out), name=f"t{seed}", seed=seed,
                        device="cpu", progress=False) for seed in (1, 2)]


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_the_ensemble_is_the_weighted_mean_or_the_most_confident_teacher():
    a = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 8.0]])
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(EnsembleTeacher([_Fixed(a), _Fixed(b)])(x), (a + b) / 2)
    weighted = EnsembleTeacher([_Fixed(a), _Fixed(b)], weights=[3, 1])
    assert torch.allclose(weighted(x), 0.75 * a + 0.25 * b)
    confident = EnsembleTeacher([_Fixed(a), _Fixed(b)], mode="confident")(x)
    assert torch.equal(confident, torch.stack([a[0], b[1]]))  # sample 0: a is surer; sample 1: b is
    assert torch.equal(ensemble_logits([a, a.clone()], [0.5, 0.5], "confident"), a)  # a tie: the first teacher


def test_ensemble_settings_are_checked_in_one_line():
    for tree, fragment in [({"teacher": ["a", "b"], "teacher_weights": [1.0]}, "1 weights for 2 teachers"),
                           ({"teacher": ["a", "b"], "teacher_weights": [-1, 2]}, ">= 0"),
                           ({"teacher": "a", "teacher_weights": [1.0]}, "needs a list of teachers"),
                           ({"teacher": ["a", "b"], "teacher_weights": [1, 1], "teacher_mode": "confident"},
                            "teacher_mode=mean"),
                           ({"teacher": []}, "empty list")]:
        with pytest.raises(ConfigError, match=fragment) as info:
            resolve_config(from_dict(TrainConfig, {"method": "kd", **tree}))
        assert len(str(info.value).splitlines()) == 1


def test_a_feature_method_names_its_layers_per_teacher():
    members = [kdlab.models.create_model("cnn_tiny", num_classes=10, in_channels=1) for _ in range(2)]
    student = kdlab.models.create_model("cnn_tiny", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match=r"method.teacher_layers=\[t0.layer3\]"):
        build_method("at", {}, student, EnsembleTeacher(members))
    layer = kdlab.models.create_model("cnn_tiny").stage_names[-1]
    method = build_method("at", {"teacher_layers": [f"t0.{layer}"], "student_layers": [layer]}, student,
                          EnsembleTeacher(members))
    assert method.teacher_layers() == [f"t0.{layer}"]


def test_two_teachers_distill_into_one_student_from_the_cli(tmp_path, fmnist, teachers, capsys):
    a, b = (str(t.run_dir) for t in teachers)
    args = ["distill", "student=cnn_tiny", "method=kd", f"teacher=[{a},{b}]", f"dataset.root={fmnist}",
            "dataset.batch_size=50", "epochs=1", f"out_dir={tmp_path}", "progress=false", "device=cpu"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    identity = json.loads((run_dir / "identity.json").read_text())
    assert identity["teacher"]["mode"] == "mean" and len(identity["teacher"]["teachers"]) == 2
    assert identity["teacher"]["weights"] == [0.5, 0.5]
    assert main(args) == 0  # train-or-load: the same ensemble is the same run
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == str(run_dir)
    assert main([*args, "teacher_mode=confident"]) == 0  # another ensemble: another run
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] != str(run_dir)


def test_two_teachers_from_the_api_and_the_run_key_follows_every_teacher(tmp_path, fmnist, teachers):
    first = kdlab.distill("cnn_tiny", teacher=list(teachers), method="kd", data=_data(fmnist), **_common(tmp_path))
    assert first.config.teacher == [str(t.run_dir) for t in teachers] or len(first.config.teacher) == 2
    other = kdlab.train("cnn_tiny", _data(fmnist), epochs=1, out_dir=str(tmp_path), name="t3", seed=3, device="cpu",
                        progress=False)
    changed = kdlab.distill("cnn_tiny", teacher=[teachers[0], other], method="kd", data=_data(fmnist),
                            **_common(tmp_path))
    weighted = kdlab.distill("cnn_tiny", teacher=list(teachers), method="kd", data=_data(fmnist),
                             teacher_weights=[2, 1], **_common(tmp_path))
    assert len({first.run_dir, changed.run_dir, weighted.run_dir}) == 3
    assert 0 <= first.metrics["test_top1"] <= 100


def _experiment(tmp_path, root, extra: str = "") -> Path:
    path = tmp_path / "ens.yaml"
    path.write_text(f"""name: ens
out_dir: {tmp_path / 'exp'}
dataset: {{name: fashion_mnist, root: {root}, batch_size: 50}}
seeds: [0]
teachers: [{{name: cnn_tiny, label: a}}, {{name: cnn_small, label: b}}]
ensembles: [{{label: ens, teachers: [a, b], mode: confident}}]
students: [{{name: cnn_tiny, label: s}}]
methods: [kd, {{name: at, label: at-ens, via: ens, teacher_layers: [t0.block2], student_layers: [block2]}}]
teacher_schedule: {{epochs: 1, optim: {{lr: 0.05}}}}
student_schedule: {{epochs: 1, optim: {{lr: 0.05}}}}
progress: false
device: cpu
{extra}""")
    return path


def test_an_experiment_distils_a_student_from_an_ensemble_of_its_teacher_runs(tmp_path, fmnist):
    from kdlab.experiments.config import load_experiment_file
    from kdlab.experiments.plan import expand, teacher_sources
    from kdlab.scale import run_experiment

    exp = load_experiment_file(_experiment(tmp_path, fmnist))
    summary = run_experiment(exp)
    assert not summary["failed"]
    plan = expand(exp, "fp")
    students = {(s.method, s.teacher): s for s in plan if s.role == "student"}
    assert set(students) == {("kd", "a"), ("kd", "b"), ("kd", "ens(a+b)"), ("at-ens", "ens(a+b)")}
    ens = students[("kd", "ens(a+b)")]
    assert [t.student for t in teacher_sources(ens)] == ["a", "b"]
    assert ens.cfg.teacher == [str(t.model_path) for t in teacher_sources(ens)]
    manifest = json.loads((exp.directory / "manifest.json").read_text())
    assert {r["teacher"] for r in manifest["runs"] if r["role"] == "student"} == {"a", "b", "ens(a+b)"}
    rows = [r for r in manifest["runs"] if r["role"] == "student"]
    assert len(rows) == 4 and all((exp.directory / r["run_dir"] / "result.json").is_file() for r in rows)
    ensemble_run = next(exp.directory / r["run_dir"] for r in rows if r["method"] == "kd" and r["teacher"] != "a"
                        and r["teacher"] != "b")
    identity = json.loads((ensemble_run / "identity.json").read_text())
    assert identity["teacher"]["mode"] == "confident" and len(identity["teacher"]["teachers"]) == 2


def test_changing_one_member_changes_the_ensembles_run_keys(tmp_path, fmnist):
    from kdlab.experiments.config import load_experiment_file
    from kdlab.experiments.plan import expand

    def keys(*overrides):
        plan = expand(load_experiment_file(_experiment(tmp_path, fmnist), list(overrides)), "fp")
        return {(s.method, s.teacher): s.key for s in plan if s.role == "student"}

    before, after = keys(), keys("teacher_schedule.optim.lr=0.02")
    assert all(before[k] != after[k] for k in before)  # every teacher changed
    weighted = keys("ensembles=[{label: ens, teachers: [a, b], weights: [2, 1]}]")
    assert weighted[("kd", "a")] == before[("kd", "a")] and weighted[("kd", "ens(a+b)")] != before[("kd", "ens(a+b)")]


@pytest.mark.parametrize("entry, fragment", [
    ("[{teachers: [a]}]", "two or more distinct teachers"),
    ("[{teachers: [a, zz]}]", "'zz' is no teacher's label"),
    ("[{label: a, teachers: [a, b]}]", "also a teacher's"),
    ("[{teachers: [a, b], weights: [1]}]", "1 weights for 2 teachers"),
])
def test_bad_ensembles_are_one_line_errors(tmp_path, fmnist, entry, fragment):
    from kdlab.experiments.config import load_experiment_file
    from kdlab.experiments.plan import validate

    with pytest.raises(ConfigError, match=fragment) as info:
        validate(load_experiment_file(_experiment(tmp_path, fmnist), [f"ensembles={entry}", "methods=[kd]"]))
    assert len(str(info.value).splitlines()) == 1
