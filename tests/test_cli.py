"""The command line: one-line errors with exit code 2, JSON results, train -> eval, train-or-load."""

import gzip
import json
import subprocess
import sys

from pathlib import Path

import pytest

from fixtures_data import make_fashion_mnist
from kdlab.cli import main


def _tiny(root, out, *extra):
    return ["train", "model=cnn_tiny", f"dataset.root={root}", "epochs=2", "dataset.batch_size=32",
            f"out_dir={out}", "progress=false", "device=cpu", *extra]


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("args, fragment", [
    (["train", "epochs=abc"], "'epochs'"),
    (["train", "model=resnet999"], "unknown model 'resnet999'; valid models: "),
    (["train", "dataset=mnist9"], "unknown dataset 'mnist9'"),
    (["train", "optim.lr=x"], "'optim.lr'"),
    (["train", "method=kd", "method.bogus=1"], "method.bogus"),
    (["train", "not-a-setting"], "key=value"),
    (["distill", "method=kd"], "needs a teacher"),
    (["eval", "/nonexistent/run"], "checkpoint not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys, tmp_path, fmnist):
    extra = [f"dataset.root={fmnist}", f"out_dir={tmp_path}", "device=cpu"] if args[0] != "eval" else []
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_missing_and_truncated_dataset(tmp_path, capsys):
    assert main(["train", f"dataset.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path}"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
    root = tmp_path / "trunc"
    make_fashion_mnist(root, n_train=50, n_test=10)
    path = root / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    assert main(["train", f"dataset.root={root}", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "truncated" in err and len(err.splitlines()) == 1


def test_train_then_eval_then_load(tmp_path, fmnist, capsys):
    assert main(_tiny(fmnist, tmp_path)) == 0
    trained = _last_json(capsys.readouterr().out)
    assert {"test_top1", "test_loss", "epochs", "run_dir"} <= set(trained) and trained["epochs"] == 2
    run_dir = trained["run_dir"]
    assert Path(run_dir).name.startswith("cnn_tiny-ce-fashion_mnist-s0-")  # + 8 hex of the run's identity
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "model.safetensors", "best.safetensors", "result.json"):
        assert (Path(run_dir) / name).is_file(), name
    assert main(["eval", run_dir, "device=cpu"]) == 0
    evaluated = _last_json(capsys.readouterr().out)
    assert evaluated["test_top1"] == pytest.approx(trained["test_top1"], abs=1e-6)
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-3)
    # the same command again loads the finished run instead of retraining it
    assert main(_tiny(fmnist, tmp_path)) == 0
    assert _last_json(capsys.readouterr().out) == trained
    assert evaluated["data_unchanged"] is True
    # a different config is another run, under another automatic name; it never overwrites this one
    assert main(_tiny(fmnist, tmp_path, "optim.lr=0.01", "epochs=1")) == 0
    assert _last_json(capsys.readouterr().out)["run_dir"] != run_dir
    # ... and under a fixed name it is refused, naming what changed
    assert main(_tiny(fmnist, tmp_path, f"name={Path(run_dir).name}", "optim.lr=0.01")) == 2
    assert "different config (optim.lr)" in capsys.readouterr().err


def test_list_and_console_script(fmnist):
    out = subprocess.run([sys.executable, "-m", "kdlab", "list", "models", "resnet*"], capture_output=True, text=True)
    assert out.returncode == 0 and "resnet20" in out.stdout.split() and "vgg8" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "kdlab", "train", "epochs=abc"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_selected_metrics_without_per_epoch_test_eval(tmp_path, fmnist, capsys):
    assert main(_tiny(fmnist, tmp_path, "eval_test_every_epoch=false", "dataset.val_ratio=0.3")) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["selected_test_top1"] is not None and 0 <= result["selected_test_top1"] <= 100
    metrics = (Path(result["run_dir"]) / "metrics.jsonl").read_text()
    rows = [json.loads(x) for x in metrics.split("\n") if x]
    assert "test_top1" not in rows[0] and "test_top1" in rows[-1]
