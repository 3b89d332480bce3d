"""``kdlab export``: every format exports and matches PyTorch on real test images, the ONNX file runs in a process
without kdlab or torch, int8 is quantized and measured, the model card is complete, bad inputs are one-line errors."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fixtures_data import FASHION_FILES, idx_bytes, write_gz
from kdlab.cli import main
from kdlab.errors import KdlabError
from kdlab.export import RESULT_KEYS
from kdlab.export.formats import MatmulAdaptivePool, export_friendly

N_TRAIN, N_TEST, CLASSES = 400, 100, 4


def make_learnable_fashion_mnist(root, seed=0):
    """Genuine IDX files whose classes 0-3 differ in brightness: a 1-epoch model gets clear margins, so int8 top-1
    is meaningful (uniform noise images would leave near-ties that any rounding flips)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.arange(n) % CLASSES
        rng.shuffle(labels)
        images = rng.integers(0, 50, (n, 28, 28)) + 64 * labels[:, None, None]
        write_gz(root / FASHION_FILES[split][0], idx_bytes(images.astype(np.uint8)))
        write_gz(root / FASHION_FILES[split][1], idx_bytes(labels.astype(np.uint8)))
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread (the conftest's two oversubscribe a shared 2-core host: latency loops then crawl)."""
    torch.set_num_threads(1)
    yield


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A cnn_tiny teacher and a cnn_tiny student distilled from it with KD, one epoch each."""
    torch.set_num_threads(1)  # module-scoped: set up before the autouse fixture of the first test runs
    base = tmp_path_factory.mktemp("export")
    data = make_learnable_fashion_mnist(base / "fmnist")
    common = [f"dataset.root={data}", "epochs=1", "dataset.batch_size=16", f"out_dir={base}", "progress=false",
              "device=cpu"]
    assert main(["train", "model=cnn_tiny", "name=teacher", *common]) == 0
    assert main(["distill", f"teacher={base / 'teacher'}", "student=cnn_tiny", "method=kd", "method.T=2",
                 "name=student", *common]) == 0
    return {"base": base, "data": data, "teacher": base / "teacher", "student": base / "student"}


@pytest.fixture(scope="module")
def onnx_export(runs):
    """``kdlab export STUDENT --format onnx --int8`` through the CLI (stdout captured by hand: module scope)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(runs["student"]), "--format", "onnx", "--int8"]) == 0
    return _last_json(out.getvalue())


def test_onnx_export_verifies_and_int8_is_measured(runs, onnx_export):
    r = onnx_export
    folder = runs["student"] / "export" / "onnx"
    assert r["export_dir"] == str(folder) and (folder / "model.onnx").is_file() and (folder / "export.json").is_file()
    assert json.loads((folder / "export.json").read_text()) == r and set(r) == set(RESULT_KEYS)
    assert r["onnx_opset"] == 18 and r["input_shape"] == [1, 28, 28] and r["test_n"] == N_TEST
    assert r["verify_images"] == N_TEST and r["max_abs_diff"] <= r["tolerance"] and r["top1_agreement"] == 100.0
    result = json.loads((runs["student"] / "result.json").read_text())
    assert r["test_top1"] == pytest.approx(result["test_top1"], abs=1e-6)  # the file scores what PyTorch scored
    # int8: a real QDQ model, its accuracy, size and latency beside fp32's
    assert r["int8_format"] == "QDQ" and r["int8_quantized_ops"] > 0 and (folder / "model.int8.onnx").is_file()
    assert r["int8_size_mb"] > 0 and abs(r["int8_test_top1"] - r["test_top1"]) <= 5.0  # (QDQ overhead > 1.4k weights)
    assert r["int8_top1_agreement"] >= 90.0 and r["threads"] >= 1
    for prefix in ("", "torch_", "int8_"):
        assert r[f"{prefix}latency_b1_ms"] > 0 and r[f"{prefix}latency_b64_ms"] > 0


def test_onnx_runs_without_kdlab_or_torch(runs, onnx_export, tmp_path):
    """A deployer's process: raw IDX bytes / 255 into onnxruntime, metadata read from the file itself."""
    from kdlab.export.source import load_source

    src = load_source(runs["student"])  # the reference: the PyTorch student on kdlab's normalized loader images
    images, _ = zip(*src.batches("test", pixels=False))
    with torch.no_grad():
        expected = src.model(torch.cat(images)).numpy()
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import gzip, json, sys
        import numpy as np, onnxruntime as ort
        raw = gzip.decompress(open({str(runs['data'] / FASHION_FILES['test'][0])!r}, "rb").read())
        pixels = np.frombuffer(raw[16:], np.uint8).reshape(-1, 1, 28, 28).astype(np.float32) / 255
        session = ort.InferenceSession({onnx_export['file']!r}, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        logits = session.run(None, {{meta["input_name"]: pixels}})[0]
        expected = np.load({str(tmp_path / 'expected.npy')!r})
        print(json.dumps({{"torch": "torch" in sys.modules, "kdlab": any(m.startswith("kdlab") for m in sys.modules),
                          "diff": float(np.abs(logits - expected).max()), "shape": list(logits.shape),
                          "normalization": meta["normalization"], "mean": json.loads(meta["mean"])}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["torch"] is False and out["kdlab"] is False and out["shape"] == [N_TEST, 10]
    assert out["diff"] < 1e-3 and out["normalization"] == "in_graph" and out["mean"] == list(src.normalization[0])


def test_model_card(runs, onnx_export):
    folder = runs["student"] / "export" / "onnx"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["model"]["architecture"] == "cnn_tiny" and card["model"]["params"] > 0
    assert card["model"]["flops_per_image"] > 0 and len(card["model"]["class_names"]) == 10
    assert card["training"]["teacher"] == str(runs["teacher"]) and card["training"]["method"] == "kd"
    assert card["training"]["method_params"]["T"] == 2 and card["training"]["method_params"]["alpha"] == 0.9
    assert card["input"]["shape"] == ["batch", 1, 28, 28] and card["input"]["range"] == [0.0, 1.0]
    assert card["input"]["mean"] == onnx_export["mean"] and card["input"]["std"] == onnx_export["std"]
    assert card["metrics"]["fp32"]["test_top1"] == onnx_export["test_top1"]
    assert card["metrics"]["int8"]["test_top1"] == onnx_export["int8_test_top1"]
    assert card["metrics"]["fp32"]["test_ece"] is not None and card["metrics"]["int8"]["test_ece"] is not None
    assert card["provenance"]["run_key"] == "student" and card["provenance"]["kdlab_version"]
    text = (folder / "MODEL_CARD.md").read_text()
    for fragment in ("cnn_tiny", "Teacher: " + str(runs["teacher"]), "`kd`", "onnx int8 QDQ", "mean [", "ECE",
                     "Normalization is **inside** the model", "opset 18"):
        assert fragment in text, fragment


@pytest.mark.parametrize("fmt, filename", [("torchscript", "model.pt"), ("exported-program", "model.pt2")])
def test_torch_formats_export_and_verify(runs, fmt, filename, tmp_path, capsys):
    source = runs["student"] / "best.safetensors"  # a weights file, exported into a folder of our choice
    assert main(["export", str(source), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    r = _last_json(capsys.readouterr().out)
    path = tmp_path / fmt / filename
    assert r["file"] == str(path) and r["max_abs_diff"] <= r["tolerance"] and r["top1_agreement"] == 100.0
    assert r["int8_file"] is None and (tmp_path / fmt / "MODEL_CARD.md").is_file()
    extra = {"kdlab.json": ""}
    if fmt == "torchscript":
        with pytest.warns(DeprecationWarning):  # upstream deprecates TorchScript; kdlab still writes it
            module = torch.jit.load(str(path), _extra_files=extra)
    else:
        module = torch.export.load(str(path), extra_files=extra).module()
    meta = json.loads(extra["kdlab.json"])
    assert meta["normalization"] == "in_graph" and json.loads(meta["input_shape"]) == [1, 28, 28]
    x = torch.rand(3, 1, 28, 28)  # another batch size than the traced one
    from kdlab.export.source import load_source

    with torch.no_grad():
        assert torch.allclose(module(x), load_source(source).deployable()(x), atol=1e-5)


def test_export_run_columns_and_reuse(runs, onnx_export):
    from kdlab.export import export_run
    import kdlab.export

    columns = export_run(runs["student"], ["onnx"], int8=True)  # the export above is reused, not redone
    assert columns["onnx_test_top1"] == onnx_export["test_top1"]
    assert columns["onnx_int8_test_top1"] == onnx_export["int8_test_top1"]
    assert columns["onnx_int8_size_mb"] == onnx_export["int8_size_mb"]
    assert columns["onnx_latency_b1_ms"] == onnx_export["latency_b1_ms"] and columns["export_threads"] >= 1
    assert all(isinstance(v, (int, float, str)) for v in columns.values())
    assert callable(kdlab.export) and kdlab.export.export_run is export_run


def test_legacy_exporter_and_matmul_pool(runs, tmp_path):
    from kdlab.export import export

    r = export(runs["student"], "onnx", out=tmp_path / "legacy.onnx", onnx_exporter="legacy")
    assert r["onnx_exporter"] == "legacy" and r["max_abs_diff"] <= r["tolerance"]
    # cnn_small's 7x7 -> 4x4 adaptive pool becomes two exact matmuls
    from kdlab.models import create_model

    model = create_model("cnn_small", num_classes=10, in_channels=1).eval()
    x = torch.rand(2, 1, 28, 28)
    friendly = export_friendly(model, x)
    assert isinstance(friendly.pool, MatmulAdaptivePool) and not isinstance(model.pool, MatmulAdaptivePool)
    with torch.no_grad():
        assert torch.allclose(friendly(x), model(x), atol=1e-6)


def test_int8_refusals(runs, onnx_export, tmp_path):
    from kdlab.export.quantize import check_int8, quantize_onnx

    with pytest.raises(KdlabError, match="loses 12.0 points"):
        check_int8({"int8_test_top1": 80.0}, {"test_top1": 92.0}, "m")
    import onnx
    from onnx import TensorProto, helper

    nothing_to_quantize = [helper.make_node("Exp", ["pixels"], ["logits"])]
    graph = helper.make_graph(nothing_to_quantize, "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "soft.onnx")
    with pytest.raises(KdlabError, match="cannot quantize"):
        quantize_onnx(tmp_path / "soft.onnx", tmp_path / "q.onnx", np.random.rand(8, 4).astype(np.float32), "soft")
    assert not (tmp_path / "q.onnx").exists()


def _bad_inputs(runs, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((runs["student"] / "model.safetensors").read_bytes()[:3000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"  # a state dict without kdlab metadata (not a kdlab student)
    save_file({"w": torch.zeros(2)}, str(plain))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs["student"] / "config.yaml").read_text())
    teacher_only = tmp_path / "teacher_only"  # a run folder whose student weights are gone
    teacher_only.mkdir()
    (teacher_only / "result.json").write_text("{}")
    return [
        ([str(tmp_path / "missing.safetensors")], "checkpoint not found"),
        ([str(runs["student"]), "--format", "tflite"], "unsupported export format 'tflite'"),
        ([str(truncated)], "not a readable safetensors checkpoint"),
        ([str(garbage)], "not a readable safetensors checkpoint"),
        ([str(plain)], "not a kdlab model checkpoint"),
        ([str(unfinished)], "not a finished kdlab run"),
        ([str(teacher_only)], "holds no student model"),
        ([str(runs["student"]), "--format", "torchscript", "--int8"], "int8 quantization is for the onnx format"),
        ([str(runs["student"]), "--device", "cuda:7"] if not torch.cuda.is_available() else
         [str(runs["student"]), "--device", "nonsense"], "config key 'device'"),
    ]


def test_bad_inputs_are_one_line_and_exit_2(runs, tmp_path, capsys):
    for args, fragment in _bad_inputs(runs, tmp_path):
        assert main(["export", *args]) == 2, args
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert captured.out == ""
    done = subprocess.run([sys.executable, "-m", "kdlab", "export", str(tmp_path / "garbage.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr



def test_mismatch_is_refused_and_leaves_no_file(runs, tmp_path, capsys, monkeypatch):
    """An export that computes something else (here: the wrong normalization) is refused with exit 2."""
    from kdlab.export.source import Deployable, Source

    monkeypatch.setattr(Source, "deployable", lambda self: Deployable(self.model, (0.0,), (1.0,)).eval())
    assert main(["export", str(runs["student"]), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match PyTorch" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # neither the model nor export.json


def test_resized_run_exports_at_its_training_size(runs, tmp_path, capsys):
    """dataset.image_size: the model's input is the resized image; the resize is the deployer's preprocessing."""
    assert main(["train", "model=cnn_tiny", f"dataset.root={runs['data']}", "dataset.image_size=32", "epochs=1",
                 f"out_dir={tmp_path}", "name=resized", "progress=false", "device=cpu"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "resized"), "--format", "exported-program"]) == 0
    r = _last_json(capsys.readouterr().out)
    assert r["input_shape"] == [1, 32, 32] and r["resize"] == [32, 32] and r["max_abs_diff"] <= r["tolerance"]
    assert "resize to 32x32" in (tmp_path / "resized" / "export" / "exported-program" / "MODEL_CARD.md").read_text()


def test_an_experiment_exports_its_students_and_reports_deployable_accuracy(tmp_path):
    data = make_learnable_fashion_mnist(tmp_path / "fmnist")
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""
        name: deploy
        out_dir: {tmp_path}
        dataset: {{name: fashion_mnist, root: {data}, batch_size: 16}}
        seeds: [0]
        teachers: [{{name: cnn_tiny}}]
        students: [{{name: cnn_tiny}}]
        methods: [kd]
        teacher_schedule: {{epochs: 1}}
        student_schedule: {{epochs: 1}}
        export: [onnx]
        device: cpu
        progress: false
    """))
    assert main(["run", str(path)]) == 0
    rows = {r["role"]: r for r in json.loads((tmp_path / "deploy" / "report" / "results.json").read_text())["rows"]}
    for role in ("baseline", "student"):
        assert rows[role]["int8_test_top1_mean"] is not None and rows[role]["onnx_latency_b1_ms"] > 0
        assert rows[role]["onnx_test_top1_mean"] == pytest.approx(rows[role]["test_top1_last_mean"], abs=1e-6)
    assert rows["teacher"].get("int8_test_top1_mean") is None
    assert "int8 top-1 (%)" in (tmp_path / "deploy" / "report" / "results.md").read_text()
