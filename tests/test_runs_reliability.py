"""Input handling a user expects: numbers as Python spells them, a run's identity, file modes, names freed by runs
that never started, ``kdlab eval`` reproducing a run's numbers, and a report that never drops finished runs silently."""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass

import pytest

from kdlab.cli import main
from kdlab.config import TrainConfig, from_dict, load_config, to_dict
from kdlab.errors import ConfigError
from kdlab.files import load_weights, save_weights, sha256_file
from kdlab.runs.identity import resolve_config


def _train(root, out, *extra):
    return ["train", "model=cnn_tiny", f"dataset.root={root}", "epochs=2", "dataset.batch_size=32", f"out_dir={out}",
            "progress=false", "device=cpu", *extra]


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


# -- numbers ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E-4", 5e-4), ("1.0e9", 1e9), ("1_000.5", 1000.5),
                                         (".5", 0.5), ("+2e+2", 200.0), ("1e3", 1000.0)])
def test_every_python_float_spelling_is_a_number(text, value, tmp_path):
    assert load_config(TrainConfig, overrides=[f"optim.lr={text}"]).optim.lr == value
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  lr: {text}\n  weight_decay: {text}\n  milestones: [{text}]\n")  # (betas: < 1)
    cfg = load_config(TrainConfig, path)
    assert cfg.optim.lr == cfg.optim.weight_decay == cfg.optim.milestones[0] == value
    assert isinstance(cfg.optim.lr, float)


def test_ints_as_python_spells_them_and_strings_stay_strings():
    cfg = load_config(TrainConfig, overrides=["epochs=1_000", "dataset.batch_size=0x10", "name=1e-3", "seed=007"])
    assert (cfg.epochs, cfg.dataset.batch_size, cfg.name) == (1000, 16, "1e-3")
    assert cfg.seed == 7  # YAML 1.1 would read 007 as octal 7 as well
    for bad in ("epochs=1e3", "epochs=2.5", "epochs=true", "optim.lr=1e-3x", "optim.lr=true"):
        with pytest.raises(ConfigError):
            load_config(TrainConfig, overrides=[bad])


def test_method_params_and_model_kwargs_take_number_spellings():
    cfg = resolve_config(load_config(TrainConfig, overrides=["model=cnn_small", "model.dropout=1e-1", "method=kd",
                                                             "method.T=4e0"]))
    assert cfg.model.kwargs == {"dropout": 0.1} and cfg.method.params["T"] == 4.0


# -- a run's identity -------------------------------------------------------------------------------------------------
def test_writing_a_default_explicitly_is_the_same_config():
    plain = resolve_config(load_config(TrainConfig, overrides=["model=cnn_small", "method=kd"]))
    explicit = resolve_config(load_config(TrainConfig, overrides=[
        "model=cnn_small", "model.dropout=0.0", "method=kd", "method.T=4", "optim.lr=1e-1", "dataset.val_ratio=0.1",
        "optim.weight_decay=5e-4"]))
    assert to_dict(plain) == to_dict(explicit)
    changed = resolve_config(load_config(TrainConfig, overrides=["model=cnn_small", "model.dropout=0.5"]))
    assert changed.model.kwargs == {"dropout": 0.5}


def test_spelling_progress_and_location_do_not_change_a_run(tmp_path, fmnist, capsys):
    assert main(_train(fmnist, tmp_path, "name=r", "optim.lr=0.05")) == 0
    first = _last_json(capsys.readouterr().out)
    assert main(_train(fmnist, tmp_path, "name=r", "optim.lr=5e-2", "progress=true")) == 0
    captured = capsys.readouterr()
    assert _last_json(captured.out) == first and "training" not in captured.err  # loaded, not trained again
    shutil.copytree(tmp_path / "r", tmp_path / "moved")
    assert main(_train(fmnist, tmp_path, "name=moved", "optim.lr=0.05")) == 0  # a copied run is the same run
    assert "training" not in capsys.readouterr().err


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_name(tmp_path, fmnist, capsys):
    assert main(_train(fmnist, tmp_path, "name=n", "optim.lr=nan")) == 2  # diverges in its first epoch
    run = tmp_path / "n"
    assert (run / "config.yaml").is_file() and (run / "failure.json").is_file()
    assert not (run / "checkpoints" / "latest.json").exists()
    capsys.readouterr()
    assert main(_train(fmnist, tmp_path, "name=n", "optim.lr=0.05")) == 0
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert not (run / "failure.json").exists() and (run / "result.json").is_file()
    # a run with a checkpoint still refuses another config
    assert main(_train(fmnist, tmp_path, "name=n", "optim.lr=0.01")) == 2
    assert "different config" in capsys.readouterr().err


def test_a_too_small_image_leaves_no_run_directory(tmp_path, fmnist):
    assert main(_train(fmnist, tmp_path, "name=s", "dataset.image_size=2")) == 2
    assert not (tmp_path / "s").exists()
    assert main(_train(fmnist, tmp_path, "name=s")) == 0


# -- files ------------------------------------------------------------------------------------------------------------
def test_output_files_get_the_users_umask(tmp_path, fmnist):
    old = os.umask(0o022)
    try:
        assert main(_train(fmnist, tmp_path, "name=u")) == 0
    finally:
        os.umask(old)
    run = tmp_path / "u"
    for name in ("model.safetensors", "best.safetensors", "result.json", "config.yaml", "metrics.jsonl",
                 "checksums.json", "checkpoints/latest.json", "checkpoints/epoch-0002/state.pt"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    os.umask(0o077)
    try:
        save_weights(tmp_path / "private.safetensors", load_weights(run / "model.safetensors")[0])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.safetensors").stat().st_mode) == 0o600


def test_finished_runs_record_checksums_and_checkpoints_keep_the_previous(tmp_path, fmnist):
    assert main(_train(fmnist, tmp_path, "name=c", "epochs=3")) == 0
    run = tmp_path / "c"
    sums = json.loads((run / "checksums.json").read_text())
    weights = {k: v for k, v in sums.items() if k.endswith(".safetensors")}
    assert weights == {p.name: sha256_file(p) for p in run.glob("*.safetensors")} and "model.safetensors" in sums
    assert sums["result.json"] == sha256_file(run / "result.json")
    pointer = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert (pointer["epoch"], pointer["previous"]["epoch"]) == (3, 2)
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-0002", "epoch-0003"]
    for entry in (pointer, pointer["previous"]):
        for name, digest in entry["sha256"].items():
            assert sha256_file(run / "checkpoints" / entry["dir"] / name) == digest


# -- kdlab eval reproduces the run ------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_eval_reproduces_the_metrics_the_run_reported(precision, tmp_path, fmnist, capsys):
    assert main(_train(fmnist, tmp_path, f"name=e-{precision}", f"precision={precision}",
                       "dataset.val_ratio=0.2")) == 0
    trained = _last_json(capsys.readouterr().out)
    assert main(["eval", trained["run_dir"], "device=cpu"]) == 0
    evaluated = _last_json(capsys.readouterr().out)
    meta = json.loads((tmp_path / f"e-{precision}" / "meta.json").read_text())
    assert evaluated["precision"] == ("bf16" if meta["bf16"] else "fp32")
    for split in ("val", "test"):
        assert evaluated[f"{split}_top1"] == pytest.approx(trained[f"{split}_top1"], abs=1e-6)
        assert evaluated[f"{split}_loss"] == pytest.approx(trained[f"{split}_loss"], rel=1e-3)


# -- the report -------------------------------------------------------------------------------------------------------
EXPERIMENT = """
name: one-seed
out_dir: {out}
dataset: {{name: fashion_mnist, root: {data}, batch_size: 32}}
seeds: [0]
teachers: [{{name: cnn_tiny, label: teacher}}]
students: [{{name: cnn_tiny}}]
methods: [kd]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
"""


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory, fmnist):
    base = tmp_path_factory.mktemp("one-seed")
    path = base / "exp.yaml"
    path.write_text(EXPERIMENT.format(out=base / "out", data=fmnist))
    assert main(["run", str(path)]) == 0
    return base / "out" / "one-seed"


def test_one_seed_shows_no_spread_and_the_report_states_its_precision(one_seed):
    markdown = (one_seed / "report" / "results.md").read_text(encoding="utf-8")
    html = (one_seed / "report" / "index.html").read_text(encoding="utf-8")
    results = json.loads((one_seed / "report" / "results.json").read_text())
    assert "± 0.00" not in markdown and "± –" in markdown and "± 0.00" not in html
    assert all(row["test_top1_last_std"] is None for row in results["rows"])
    student = next(r for r in results["rows"] if r["role"] == "student")
    assert student["gain_top1_last_mean"] is not None and student["gain_top1_last_se"] is None
    assert results["precision"] == "fp32" and "evaluated in fp32" in markdown and "evaluated in fp32" in html
    assert any("recomputed in fp32" in note for note in results["notes"])


def _copy(one_seed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(one_seed, copy)
    student = next((copy / "runs").glob("student-*"))
    return copy, student


def test_report_exits_2_when_a_finished_run_cannot_be_evaluated(one_seed, tmp_path, capsys):
    copy, student = _copy(one_seed, tmp_path)
    data = bytearray((student / "model.safetensors").read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (student / "model.safetensors").write_bytes(bytes(data))
    assert main(["report", str(copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()  # progress lines, then the error
    assert "Traceback" not in err and err.splitlines()[-1].startswith("kdlab: error: ")
    assert student.name in err and "could not evaluate" in err
    results = json.loads((copy / "report" / "results.json").read_text())  # written, with the others
    assert {r["role"] for r in results["rows"]} == {"teacher", "baseline"}
    assert any(s.get("error") and student.name in s["run_dir"] for s in results["skipped"])


@dataclass
class _Case:
    name: str
    change: str


@pytest.mark.parametrize("case", [_Case("missing-model", "delete"), _Case("unknown-model", "rename")],
                         ids=lambda c: c.name)
def test_report_names_a_missing_or_unknown_model(case, one_seed, tmp_path, capsys):
    copy, student = _copy(one_seed, tmp_path)
    model = student / "model.safetensors"
    for cache in ("eval_cache.json", "test_logits.safetensors"):
        (student / cache).unlink(missing_ok=True)
    if case.change == "delete":
        model.unlink()
        fragment = "model.safetensors"
    else:  # as when a copied experiment's plug-in is not there: a model no registry knows
        tensors, meta = load_weights(model)
        save_weights(model, tensors, {**meta, "model": "no_such_model"})
        sums = json.loads((student / "checksums.json").read_text())
        (student / "checksums.json").write_text(json.dumps({**sums, "model.safetensors": sha256_file(model)}))
        fragment = "no_such_model"
    assert main(["report", str(copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("kdlab: error: ") and fragment in err, err


def test_a_damaged_finished_run_is_not_reused_by_an_experiment(one_seed, tmp_path, capsys):
    copy, student = _copy(one_seed, tmp_path)
    (copy / "experiment.yaml").write_text((copy / "experiment.yaml").read_text().replace(
        f"out_dir: {one_seed.parent}", f"out_dir: {copy.parent}").replace("name: one-seed", "name: copy"))
    data = bytearray((student / "best.safetensors").read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (student / "best.safetensors").write_bytes(bytes(data))
    before = sorted(p.name for p in (copy / "runs").iterdir())
    assert main(["run", str(copy / "experiment.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "best.safetensors is damaged" in err and f"delete {student}" in err and len(err.splitlines()) <= 3
    assert sorted(p.name for p in (copy / "runs").iterdir()) == before


def test_unknown_config_still_rejected_with_from_dict():
    with pytest.raises(ConfigError, match="'optim.lr'"):
        from_dict(TrainConfig, {"optim": {"lr": "1e-3 please"}})
