"""Bad inputs, as a new user and an adversarial tester give them: each is one line on stderr (at most 3 with progress
lines), exit code 2, no traceback, nothing written outside out_dir, and the finished runs beside it untouched.

Read-only and full file systems: the tests run as root, where chmod does not stop writes, so a private mount namespace
(``unshare -m``) provides a genuinely read-only bind mount (EROFS) and a 16 KiB tmpfs (ENOSPC); where that is not
permitted those two tests skip, and ``out_dir`` under a file (ENOTDIR) and under /proc (no folders can be made there)
stand for an unwritable out_dir in the table.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch

from fixtures_data import make_cifar, make_fashion_mnist
from kdlab import files
from kdlab.cli import main
from kdlab.errors import user_message

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("img_s", "time_s", "run_dir")


class Evil:
    """A pickle that runs a shell command when unpickled: it must be refused, never executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(lab, name, *extra, out=None):
    return ["train", "model=cnn_tiny", f"dataset.root={lab['data']}", "epochs=2", "dataset.batch_size=32",
            f"out_dir={out or lab['out']}", "device=cpu", "progress=false", f"name={name}", *extra]


EXPERIMENT = """
name: {name}
out_dir: {out}
dataset: {{name: fashion_mnist, root: {data}, batch_size: 32}}
seeds: [0]
teachers: [{teacher}]
students: [{student}]
methods: [kd]
teacher_schedule: {{epochs: 1}}
student_schedule: {{epochs: 1}}
device: cpu
progress: false
"""


def _experiment(lab, name, teacher="{name: cnn_tiny, label: t}", student="{name: cnn_tiny}", out=None):
    path = lab["files"] / f"{name}.yaml"
    path.write_text(EXPERIMENT.format(name=name, out=out or lab["exps"], data=lab["data"], teacher=teacher,
                                      student=student))
    return str(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    lab = {"base": base, "data": base / "fmnist", "files": base / "files", "out": base / "work" / "out",
           "exps": base / "work" / "out" / "experiments", "marker": base / "PWNED"}
    make_fashion_mnist(lab["data"], n_train=200, n_test=60)
    lab["files"].mkdir()
    torch.set_num_threads(2)  # as every test runs (conftest): a resumed run's arithmetic is then bit-identical
    assert main(_train(lab, "good")) == 0  # the finished run that no bad input may touch
    good = lab["out"] / "good"
    lab["good_files"] = {p.name: _sha(p) for p in good.iterdir() if p.is_file() and p.name != ".lock"}
    weights = (good / "model.safetensors").read_bytes()
    (lab["files"] / "trunc.safetensors").write_bytes(weights[: len(weights) // 2])
    (lab["files"] / "text.safetensors").write_text("these are not weights\n")
    (lab["files"] / "foreign.pt").write_text("not a torch file\n")
    torch.save({"weight": torch.zeros(2), "payload": Evil(lab["marker"])}, lab["files"] / "evil.pt")
    _damaged_datasets(lab)
    return lab


def _damaged_datasets(lab) -> None:
    trunc = lab["files"] / "fmnist-truncated"
    make_fashion_mnist(trunc, n_train=50, n_test=10)
    images = trunc / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    cut = lab["files"] / "fmnist-cut-gzip"
    make_fashion_mnist(cut, n_train=50, n_test=10)
    cut_file = cut / "train-labels-idx1-ubyte.gz"
    cut_file.write_bytes(cut_file.read_bytes()[:-12])  # the gzip stream itself ends early
    make_cifar(lab["files"] / "cifar-corrupt", "cifar10", overrides={"data_batch_1": b"\x80\x02}q\x00(X\x05garbage"})
    make_cifar(lab["files"] / "cifar-evil", "cifar10", overrides={"data_batch_2": pickle.dumps(Evil(lab["marker"]))})


def _resumable_copy(lab, name: str) -> Path:
    """A copy of the finished run as it was after its last epoch's checkpoint, before it finished."""
    run = lab["out"] / name
    shutil.copytree(lab["out"] / "good", run)
    for leftover in ("result.json", "model.safetensors", "checksums.json", ".lock"):
        (run / leftover).unlink(missing_ok=True)
    return run


def _damage(path: Path) -> None:
    """Flip bytes in the middle: the file still parses, only its checksum can tell."""
    data = bytearray(path.read_bytes())
    middle = len(data) - 64
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


# -- set-ups of the cases that need one (each returns a context to run the command in) --------------------------------
def corrupt_latest(lab):
    run = _resumable_copy(lab, "corrupt-latest")
    (run / "checkpoints" / "latest.json").write_text('{"epoch": 2, "dir": "epo')
    return nullcontext()


def no_good_checkpoint(lab):
    run = _resumable_copy(lab, "no-good-checkpoint")
    for epoch in ("epoch-0001", "epoch-0002"):
        _damage(run / "checkpoints" / epoch / "weights.safetensors")
    return nullcontext()


def damaged_finished_model(lab):
    run = lab["out"] / "damaged-model"
    if not run.exists():
        shutil.copytree(lab["out"] / "good", run)
        _damage(run / "model.safetensors")
    return nullcontext()


def foreign_checkpoint_in_run(lab):
    run = _resumable_copy(lab, "foreign-checkpoint")
    shutil.copy(lab["files"] / "text.safetensors", run / "checkpoints" / "epoch-0002" / "weights.safetensors")
    shutil.copy(lab["files"] / "text.safetensors", run / "checkpoints" / "epoch-0001" / "weights.safetensors")
    return nullcontext()


@contextmanager
def held_lock(lab):
    with files.directory_lock(lab["out"] / "busy", "training this run"):  # another kdlab process, as flock sees it
        yield


CASES = [
    # config types and number spellings
    ("type-int", lambda lab: _train(lab, "x", "epochs=abc"), "'epochs'", None),
    ("type-float", lambda lab: _train(lab, "x", "optim.lr=fast"), "'optim.lr'", None),
    ("float-for-int", lambda lab: _train(lab, "x", "epochs=1e3"), "'epochs'", None),
    ("literal", lambda lab: _train(lab, "x", "optim.name=lamb"), "'optim.name'", None),
    ("bool-for-int", lambda lab: _train(lab, "x", "seed=true"), "'seed'", None),
    ("unknown-key", lambda lab: _train(lab, "x", "optim.lrate=0.1"), "optim.lrate", None),
    ("zero-epochs", lambda lab: _train(lab, "x", "epochs=0"), "'epochs'", None),
    # unknown names
    ("unknown-model", lambda lab: _train(lab, "x", "model=resnet999"), "unknown model 'resnet999'", None),
    ("unknown-dataset", lambda lab: _train(lab, "x", "dataset=mnist9"), "unknown dataset 'mnist9'", None),
    ("unknown-method", lambda lab: _train(lab, "x", "method=kdd"), "unknown method 'kdd'", None),
    ("unknown-method-experiment", lambda lab: ["run", _experiment(lab, "m"), "methods=[kdd]"], "unknown method", None),
    # damaged data
    ("truncated-idx", lambda lab: _train(lab, "x", f"dataset.root={lab['files'] / 'fmnist-truncated'}"),
     "truncated", None),
    ("cut-gzip", lambda lab: _train(lab, "x", f"dataset.root={lab['files'] / 'fmnist-cut-gzip'}"),
     "train-labels-idx1-ubyte.gz", None),
    ("corrupt-cifar-pickle", lambda lab: _train(lab, "x", "dataset=cifar10",
                                                f"dataset.root={lab['files'] / 'cifar-corrupt'}"), "pickle", None),
    ("malicious-cifar-pickle", lambda lab: _train(lab, "x", "dataset=cifar10",
                                                  f"dataset.root={lab['files'] / 'cifar-evil'}"), "refusing", None),
    ("missing-data", lambda lab: _train(lab, "x", f"dataset.root={lab['files'] / 'nowhere'}"), "not found", None),
    # malicious pickles
    ("malicious-pretrained", lambda lab: _train(lab, "x", f"model.pretrained={lab['files'] / 'evil.pt'}"),
     "refusing to unpickle", None),
    ("malicious-teacher", lambda lab: _train(lab, "x", "method=kd", f"teacher={lab['files'] / 'evil.pt'}"),
     "evil.pt", None),
    ("malicious-eval", lambda lab: ["eval", str(lab["files"] / "evil.pt")], "evil.pt", None),
    # damaged and foreign checkpoints
    ("truncated-teacher", lambda lab: _train(lab, "x", "method=kd", f"teacher={lab['files'] / 'trunc.safetensors'}"),
     "trunc.safetensors", None),
    ("text-teacher", lambda lab: _train(lab, "x", "method=kd", f"teacher={lab['files'] / 'text.safetensors'}"),
     "text.safetensors", None),
    ("foreign-pt-teacher", lambda lab: _train(lab, "x", "method=kd", f"teacher={lab['files'] / 'foreign.pt'}"),
     "foreign.pt", None),
    ("truncated-eval", lambda lab: ["eval", str(lab["files"] / "trunc.safetensors")], "trunc.safetensors", None),
    ("text-eval", lambda lab: ["eval", str(lab["files"] / "text.safetensors")], "text.safetensors", None),
    ("missing-eval", lambda lab: ["eval", str(lab["files"] / "nothing")], "checkpoint not found", None),
    ("corrupt-latest-json", lambda lab: _train(lab, "corrupt-latest"), "latest.json is damaged", corrupt_latest),
    ("no-good-checkpoint", lambda lab: _train(lab, "no-good-checkpoint"), "delete", no_good_checkpoint),
    ("foreign-checkpoint-in-run", lambda lab: _train(lab, "foreign-checkpoint"), "weights.safetensors",
     foreign_checkpoint_in_run),
    ("damaged-finished-model", lambda lab: _train(lab, "damaged-model"), "not served as finished",
     damaged_finished_model),
    ("damaged-finished-eval", lambda lab: ["eval", str(lab["out"] / "damaged-model")], "not served as finished",
     damaged_finished_model),
    ("corrupt-teacher-experiment", lambda lab: ["run", _experiment(
        lab, "ct", teacher=f"{{name: cnn_tiny, label: t, checkpoint: {lab['files'] / 'trunc.safetensors'}}}")],
     "trunc.safetensors", None),
    ("missing-pretrained-experiment", lambda lab: ["run", _experiment(
        lab, "mp", student=f"{{name: cnn_tiny, pretrained: {lab['files'] / 'no.safetensors'}}}")],
     "no.safetensors", None),
    # unwritable out_dir
    ("out-dir-under-a-file", lambda lab: _train(lab, "x", out=lab["files"] / "text.safetensors" / "out"),
     "cannot create or write", None),
    ("out-dir-in-proc", lambda lab: _train(lab, "x", out="/proc/kdlab-out"), "cannot create or write", None),
    ("experiment-out-dir-under-a-file", lambda lab: ["run", _experiment(lab, "ro", out=lab["files"] / "foreign.pt")],
     "cannot create or write", None),
    # paths and names
    ("name-escapes", lambda lab: _train(lab, "../../escaped"), "'name'", None),
    ("name-absolute", lambda lab: _train(lab, str(lab["base"] / "absolute")), "'name'", None),
    ("name-dot", lambda lab: _train(lab, "."), "'name'", None),
    ("experiment-name-escapes", lambda lab: ["run", _experiment(lab, "e"), "name=../../escaped"], "'name'", None),
    ("second-process", lambda lab: _train(lab, "busy"), "another kdlab process", held_lock),
    # NaN
    ("nan-lr", lambda lab: _train(lab, "nan", "optim.lr=nan"), "training diverged", None),
    ("huge-lr", lambda lab: _train(lab, "huge", "optim.lr=1e30"), "training diverged", None),
    # sizes and channels
    ("image-too-small", lambda lab: _train(lab, "small", "dataset.image_size=2"), "cannot take 1×2×2", None),
    ("image-too-small-experiment", lambda lab: ["run", _experiment(lab, "s"), "dataset.image_size=2"],
     "cannot take 1×2×2", None),
    ("eval-1-channel-on-3", lambda lab: ["eval", str(lab["out"] / "good"), "dataset.channels=3"],
     "1-channel", None),
    ("eval-too-small", lambda lab: ["eval", str(lab["out"] / "good"), "dataset.image_size=2"],
     "cannot take", None),
    # experiments
    ("repeated-seeds", lambda lab: ["run", _experiment(lab, "r"), "seeds=[0,0]"], "seed 0 is listed twice", None),
]


def _outside(lab) -> set[str]:
    """Every path under the test's base folder that is not inside out_dir (what a bad input must not add to)."""
    out = lab["out"]
    return {str(p.relative_to(lab["base"])) for p in lab["base"].rglob("*") if out not in p.parents and p != out}


def _finished_untouched(lab) -> None:
    good = lab["out"] / "good"
    assert {p.name: _sha(p) for p in good.iterdir() if p.is_file() and p.name != ".lock"} == lab["good_files"]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, lab, capsys):
    _, argv, fragment, setup = case
    context = setup(lab) if setup else nullcontext()
    args = argv(lab)  # (writes an experiment's file, where it has one)
    before = _outside(lab)
    with context:
        code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert err.splitlines()[-1].startswith("kdlab: error: ") and fragment in err, err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err, err
    assert captured.out == ""
    assert _outside(lab) == before
    assert not lab["marker"].exists(), "a malicious pickle ran"
    assert not Path("/escaped").exists() and not (lab["base"] / "absolute").exists()
    _finished_untouched(lab)


def test_the_table_is_large_enough():
    assert len(CASES) >= 20


def _kdlab(*args, prefix=(), cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KDLAB_NO_PROGRESS": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "kdlab", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _one_line_exit_2(proc) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, fragment", [
    (lambda lab: _train(lab, "x", f"model.pretrained={lab['files'] / 'evil.pt'}"), "refusing to unpickle"),
    (lambda lab: _train(lab, "x", "method=kd", f"teacher={lab['files'] / 'trunc.safetensors'}"), "trunc.safetensors"),
    (lambda lab: _train(lab, "../../escaped"), "'name'"),
], ids=["malicious-pickle", "truncated-teacher", "escaping-name"])
def test_through_a_real_process(argv, fragment, lab):
    err = _one_line_exit_2(_kdlab(*argv(lab)))
    assert fragment in err and not lab["marker"].exists()
    _finished_untouched(lab)


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def _in_mount_namespace(setup: str, *args):
    """``kdlab ARGS`` in a private mount namespace after the shell commands ``setup`` (mounts vanish with it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KDLAB_NO_PROGRESS": "1"}
    command = f"{setup} && exec {sys.executable} -m kdlab " + " ".join(f"'{a}'" for a in args)
    return subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -m (mount namespaces) for a read-only file system")
def test_read_only_out_dir(lab):
    target = lab["base"] / "readonly"
    target.mkdir(exist_ok=True)
    proc = _in_mount_namespace(f"mount --bind {target} {target} && mount -o remount,bind,ro {target}",
                               *_train(lab, "ro", out=target))
    err = _one_line_exit_2(proc)
    assert "read-only" in err and str(target) in err
    assert list(target.iterdir()) == []


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -m (mount namespaces) for a full file system")
def test_full_disk_mid_run_is_one_line_and_keeps_nothing_half_written(lab):
    target = lab["base"] / "tiny-disk"
    target.mkdir(exist_ok=True)
    proc = _in_mount_namespace(f"mount -t tmpfs -o size=16k tmpfs {target}", *_train(lab, "full", out=target))
    err = _one_line_exit_2(proc)
    assert "no space left" in err and str(target) in err and ".tmp" not in err


def test_file_system_errors_map_to_one_line_naming_the_path():
    for code, words in ((errno.EROFS, "read-only"), (errno.ENOSPC, "no space left"), (errno.EACCES, "permission"),
                        (errno.EDQUOT, "quota")):
        message = user_message(OSError(code, os.strerror(code), "/data/runs/x/model.safetensors"))
        assert message is not None and words in message and "/data/runs/x/model.safetensors" in message
        assert "\n" not in message
    assert user_message(json.JSONDecodeError("Expecting value", "{", 1)) is not None
    assert user_message(pickle.UnpicklingError("bad")) is not None
    assert user_message(ZeroDivisionError("a bug")) is None and user_message(KeyError("x")) is None
    assert user_message(OSError(errno.EBADF, "Bad file descriptor")) is None  # kdlab's own misuse: a bug


def test_a_genuine_bug_keeps_its_traceback(monkeypatch, lab):
    import kdlab.runs.train as single

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not an input problem")

    monkeypatch.setattr(single, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(_train(lab, "bug"))


def test_damaged_newest_checkpoint_resumes_from_the_previous_with_one_warning(lab, capsys):
    run = _resumable_copy(lab, "resume-previous")
    _damage(run / "checkpoints" / "epoch-0002" / "weights.safetensors")
    assert main(_train(lab, "resume-previous")) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:") and "collapsed" not in line]
    assert len(warnings) == 1 and "epoch-0002/weights.safetensors is damaged" in warnings[0]
    assert "resuming from the checkpoint before it, epoch-0001" in warnings[0]
    # the retrained last epoch is bit-identical: the same final weights and metrics as the uninterrupted run
    assert _sha(run / "model.safetensors") == lab["good_files"]["model.safetensors"]
    got = json.loads(captured.out.strip().splitlines()[-1])
    expected = json.loads((lab["out"] / "good" / "result.json").read_text())
    assert {k: v for k, v in got.items() if not k.endswith(TIMING)} == \
        {k: v for k, v in expected.items() if not k.endswith(TIMING)}
    pointer = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert pointer["epoch"] == 2 and pointer["previous"]["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-0001", "epoch-0002"]
    _finished_untouched(lab)


def test_deleting_result_json_rewrites_a_damaged_model_from_the_last_checkpoint(lab, capsys):
    """What the damaged-model message tells the user to do, done: the same weights come back."""
    run = lab["out"] / "repair-model"
    shutil.copytree(lab["out"] / "good", run)
    _damage(run / "model.safetensors")
    assert main(_train(lab, "repair-model")) == 2
    assert f"delete {run / 'result.json'}" in capsys.readouterr().err
    (run / "result.json").unlink()
    assert main(_train(lab, "repair-model")) == 0
    assert _sha(run / "model.safetensors") == lab["good_files"]["model.safetensors"]
    assert main(["eval", str(run), "device=cpu"]) == 0
