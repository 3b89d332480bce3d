"""Issue 21 "Trust": loading a file never runs code, configs are checked beyond their types, damaged or foreign files
are never used, and nothing is written outside out_dir. Each bad input is one line (exit 2) or a ConfigError; crafted
files carry a marker-file payload that proves no code ran."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.config import TrainConfig, load_config
from kdlab.errors import CheckpointError, ConfigError, InputShapeError
from kdlab.files import load_weights, save_weights
from kdlab.models.probe import check_forward
from kdlab.models.saved import load_model
from kdlab.errors import ReportError
from kdlab.expdir import Manifest, PlannedRun
from kdlab.rundir import RunDir


EVIL_MODULE = '''
from pathlib import Path
Path({marker!r}).touch()
from kdlab.models import create_model


def Net(num_classes=10, in_channels=1):
    return create_model("cnn_tiny", num_classes=num_classes, in_channels=in_channels)
'''


def _train(lab, name, *extra):
    return ["train", "model=cnn_tiny", f"dataset.root={lab['data']}", "epochs=1", "dataset.batch_size=32",
            f"out_dir={lab['out']}", "device=cpu", "progress=false", f"name={name}", *extra]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, fmnist):
    base = tmp_path_factory.mktemp("trust")
    lab = {"base": base, "data": fmnist, "out": base / "out", "marker": base / "PWNED", "code": base / "code"}
    lab["code"].mkdir()
    assert main(_train(lab, "good")) == 0
    good = lab["out"] / "good"
    state, meta = load_weights(good / "model.safetensors")
    (lab["code"] / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(lab["marker"])))
    (lab["code"] / "exitmod.py").write_text("import sys\nsys.exit(0)\n")
    save_weights(base / "evil.safetensors", state, {**meta, "model": "evilmod:Net", "imports": ["evilmod"]})
    save_weights(base / "getoutput.safetensors", state, {**meta, "model": "subprocess:getoutput", "imports": []})
    save_weights(base / "no-classes.safetensors", state, {k: v for k, v in meta.items() if k != "num_classes"})
    return lab


@pytest.fixture
def in_code(lab, monkeypatch):
    """Run from the folder of the plug-in modules (importable, as kdlab makes the working directory)."""
    monkeypatch.chdir(lab["code"])
    yield
    for name in ("evilmod", "exitmod"):
        sys.modules.pop(name, None)


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err, err
    return err.splitlines()[-1]


def _no_code_ran(lab) -> None:
    assert not lab["marker"].exists(), "a file's metadata ran code"
    assert "evilmod" not in sys.modules


def _experiment(lab, name: str, imports: list[str], run_dir: str = "runs/good") -> Path:
    exp = lab["base"] / "exps" / name
    if not (exp / "runs" / "good").exists():
        shutil.copytree(lab["out"] / "good", exp / "runs" / "good")
    run = PlannedRun(key="good", role="teacher", teacher=None, student="t", method="ce", seed=0,
                     run_dir=exp / "runs" / "good", model="cnn_tiny")
    Manifest(name, {"name": "fashion_mnist", "root": str(lab["data"])}, [0], [run], imports).write(exp)
    if run_dir != "runs/good":
        data = json.loads((exp / "manifest.json").read_text())
        data["runs"][0]["run_dir"] = run_dir
        (exp / "manifest.json").write_text(json.dumps(data))
    return exp


# -- 1. loading never runs code --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    lambda lab: ["eval", str(lab["base"] / "evil.safetensors"), "device=cpu"],
    lambda lab: ["eval", str(lab["base"] / "getoutput.safetensors"), "device=cpu"],
    lambda lab: ["export", str(lab["base"] / "evil.safetensors"), "--format", "torchscript"],
    lambda lab: ["report", str(_experiment(lab, "evil", ["evilmod"])), "--device", "cpu"],
    lambda lab: _train(lab, "evil-teacher", "method=kd", f"teacher={lab['base'] / 'evil.safetensors'}"),
], ids=["eval", "eval-stdlib-callable", "export", "report", "distill-teacher"])
def test_a_files_metadata_imports_nothing_unasked(argv, lab, in_code, capsys):
    line = _one_line(capsys, main(argv(lab)))
    assert "--import" in line, line
    _no_code_ran(lab)


def test_the_user_can_allow_the_module_a_file_names(lab, in_code):
    with pytest.raises(ConfigError, match="--import evilmod"):
        load_model(lab["base"] / "evil.safetensors", "cpu", allowed_imports=["othermod"])
    _no_code_ran(lab)
    model, meta = load_model(lab["base"] / "evil.safetensors", "cpu", allowed_imports=["evilmod"])
    assert lab["marker"].exists() and meta["model"] == "evilmod:Net"
    lab["marker"].unlink()
    assert isinstance(load_model(lab["base"] / "evil.safetensors", trust_code=True)[0], nn.Module)
    lab["marker"].unlink(missing_ok=True)


def test_a_plugin_that_exits_on_import_is_one_line(lab, in_code, capsys):
    line = _one_line(capsys, main(["train", "--import", "exitmod", "model=cnn_tiny"]))
    assert "exitmod" in line and "SystemExit" in line


# -- 2. typed config validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("optim.lr=-0.1", "'optim.lr'"), ("optim.momentum=-0.5", "'optim.momentum'"),
    ("optim.weight_decay=-1e-4", "'optim.weight_decay'"), ("optim.betas=[0.9,1.0]", "'optim.betas[1]'"),
    ("optim.betas=[-0.1,0.9]", "'optim.betas[0]'"), ("seed=-1", "'seed'"), ("seed=18446744073709551616", "'seed'"),
    ("dataset.split_seed=-3", "'dataset.split_seed'"), ("threads=0", "'threads'"),
    ("out_dir=runs\0x", "'out_dir'"), ("name=a\0b", "'name'"), ("epochs=99999999999999999999", "'epochs'"),
])
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")) as info:
        load_config(TrainConfig, None, [override])
    assert "\n" not in str(info.value)


def test_nan_and_huge_values_stay_for_the_divergence_check():
    assert load_config(TrainConfig, None, ["optim.lr=1e30", "seed=18446744073709551615"]).seed == 2 ** 64 - 1
    assert load_config(TrainConfig, None, ["optim.betas=[9E-1, 999e-3]"]).optim.betas == (0.9, 0.999)


@pytest.mark.parametrize("text, words", [
    ("epochs: 1\nseed: 0\nepochs: 2\n", "duplicate key 'epochs' at line 3"),
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n", "duplicate key 'lr' at line 4"),
    ("a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
    ("lol: &a [x, x]\nlol2: &b [*a, *a, *a]\n", "anchors and aliases"),
])
def test_yaml_refuses_duplicate_keys_and_aliases(text, words, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    line = _one_line(capsys, main(["train", str(path)]))
    assert words in line and str(path) in line


def test_config_files_are_size_bounded(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\nepochs: 1\n")
    with pytest.raises(ConfigError, match="too large"):
        load_config(TrainConfig, path)


# -- 3. robust readers ------------------------------------------------------------------------------------------------
def test_malformed_metadata_and_unwritable_export_are_one_line(lab, capsys):
    line = _one_line(capsys, main(["eval", str(lab["base"] / "no-classes.safetensors"), "device=cpu"]))
    assert "no-classes.safetensors" in line and "num_classes" in line
    line = _one_line(capsys, main(["export", str(lab["out"] / "good"), "--format", "torchscript", "--out",
                                   "/proc/kdlab-export"]))
    assert "cannot write the export to /proc/kdlab-export" in line


def test_a_malformed_eval_cache_is_rebuilt_with_a_warning(lab, capsys):
    exp = _experiment(lab, "cache", [])
    assert main(["report", str(exp), "--device", "cpu"]) == 0
    cache = exp / "runs" / "good" / "eval_cache.json"
    good = json.loads(cache.read_text())
    for garbage in ("[1, 2]", json.dumps({"key": good["key"]})):
        cache.write_text(garbage)
        capsys.readouterr()
        assert main(["report", str(exp), "--device", "cpu"]) == 0
        assert "eval_cache.json is malformed" in capsys.readouterr().err
        assert json.loads(cache.read_text())["last"] == good["last"]


# -- 4. nothing damaged is used ---------------------------------------------------------------------------------------
def _copy(lab, name: str) -> RunDir:
    target = lab["base"] / "copies" / name
    shutil.copytree(lab["out"] / "good", target)
    return RunDir(target)


@pytest.mark.parametrize("damage", ["missing", "garbled", "mismatch"])
def test_unverifiable_weights_are_refused(damage, lab):
    run = _copy(lab, f"sums-{damage}")
    if damage == "missing":
        run.checksums.unlink()
    elif damage == "garbled":
        run.checksums.write_text('{"model.safetensors": ')
    else:
        run.checksums.write_text(json.dumps({**json.loads(run.checksums.read_text()), "model.safetensors": "0" * 64}))
    with pytest.raises(CheckpointError) as info:
        run.check_finished()
    assert "not served as finished" in str(info.value) and "\n" not in str(info.value)


def test_result_json_is_verified_against_its_recorded_sha256(lab):
    from kdlab.engine.runio import RunIO

    run = _copy(lab, "result-sha")
    assert run.verify_result(required=True) == run.read_result()  # recorded when the run finished
    sums = json.loads(run.checksums.read_text())
    run.checksums.write_text(json.dumps({k: v for k, v in sums.items() if k not in ("result.json", "config.yaml")}))
    assert run.verify_result() == run.read_result()  # a run finished before result.json was recorded
    with pytest.raises(CheckpointError, match="not recorded"):
        run.verify_result(required=True)
    RunIO(run.path).write_result(run.read_result())
    assert run.verify_result(required=True)["test_top1"] == run.read_result()["test_top1"]
    run.check_finished()
    run.result.write_text(run.result.read_text().replace('"epochs": 1', '"epochs": 9'))
    with pytest.raises(CheckpointError, match="result.json is missing or damaged"):
        run.verify_result()


def test_a_run_without_its_config_is_never_resumed_under_another(lab):
    run = _copy(lab, "no-config")
    assert run.require_config() is not None
    run.config.unlink()
    with pytest.raises(CheckpointError, match="config cannot be proven"):
        run.require_config()
    assert RunDir(lab["base"] / "copies" / "nothing-yet").require_config() is None


# -- 5. nothing outside out_dir ---------------------------------------------------------------------------------------
def test_kdlab_folders_are_recognized_and_foreign_ones_refused(lab, tmp_path):
    good = RunDir(lab["out"] / "good")
    assert good.marker.is_file() and good.is_kdlab_run()
    legacy = _copy(lab, "legacy")
    legacy.marker.unlink()
    assert legacy.is_kdlab_run()  # identity.json, checkpoints/latest.json: made before the marker existed
    foreign = RunDir(tmp_path / "foreign")
    (foreign.path / "checkpoints").mkdir(parents=True)
    foreign.config.write_text("another: tool\n")
    assert not foreign.is_kdlab_run()
    with pytest.raises(ConfigError, match="not made by kdlab"):
        foreign.claim()
    RunDir(tmp_path / "new").claim()
    assert RunDir(tmp_path / "new").is_kdlab_run()


def test_symlinks_at_or_inside_a_run_are_refused(lab, capsys):
    outside = lab["base"] / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    (lab["out"] / "link").symlink_to(outside)
    line = _one_line(capsys, main(_train(lab, "link")))
    assert "symbolic link" in line
    run = _copy(lab, "inner-link")
    for name in ("result.json", "model.safetensors", "checksums.json"):
        (run.path / name).unlink()
    run.metrics.unlink()
    run.metrics.symlink_to(outside / "precious.txt")
    line = _one_line(capsys, main([*_train(lab, "inner-link"), f"out_dir={run.path.parent}"]))
    assert "metrics.jsonl is a symbolic link" in line
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me\n"


def test_a_foreign_folder_is_never_cleaned(lab, capsys):
    foreign = lab["out"] / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "config.yaml").write_text("another: tool\n")
    (foreign / "checkpoints" / "weights.bin").write_bytes(b"theirs")
    line = _one_line(capsys, main(_train(lab, "foreign")))
    assert "not made by kdlab" in line
    assert (foreign / "config.yaml").read_text() == "another: tool\n"


@pytest.mark.parametrize("run_dir", ["../../elsewhere", "/etc", "runs/../../x"])
def test_a_manifest_row_outside_the_experiment_is_refused(run_dir, lab):
    exp = _experiment(lab, "escape", [], run_dir=run_dir)
    with pytest.raises(ReportError, match="not inside the experiment"):
        Manifest.read(exp)


# -- 6. the forward probe checks the outputs --------------------------------------------------------------------------
class _Plain(nn.Module):
    def __init__(self, outputs: int, shape: tuple[int, ...] | None = None, params: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, outputs) if params else None
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1)) if self.fc is not None else x.flatten(1)[:, :10]
        return out.reshape(len(x), *self.shape) if self.shape else out


@pytest.mark.parametrize("model, words", [
    (_Plain(10, params=False), "has no parameters"),
    (_Plain(12), "outputs 12 logits per image but the data has 10 classes"),
    (_Plain(7), "outputs 7 logits"),
    (_Plain(10, shape=(2, 5)), "shape [2, 2, 5]"),
])
def test_check_forward_refuses_wrong_outputs(model, words):
    with pytest.raises(InputShapeError) as info:
        check_forward(model, torch.zeros(4, 1, 28, 28), "model m", num_classes=10)
    assert words in str(info.value) and "\n" not in str(info.value)
    check_forward(_Plain(10), torch.zeros(4, 1, 28, 28), "model m", num_classes=10)


def test_the_loading_docs_state_the_rule():
    import kdlab.models.saved as saved

    assert "trust_code" in textwrap.dedent(saved.load_model.__doc__ or "")
