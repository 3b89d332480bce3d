"""Ship a student: export it (ONNX, TorchScript, ExportedProgram), verify the file, quantize it, write a model card.

    import kdlab.export
    result = kdlab.export("runs/my-student", format="onnx", int8=True)
    # kdlab export runs/my-student --format onnx --int8

``kdlab.export`` is this package and is callable: ``kdlab.export(...)`` is :func:`export`.

Every exported file computes ``logits = student((pixels - mean) / std)`` for float32 pixels in [0, 1] (NCHW, the
size the run trained on): the normalization is inside the graph (see :mod:`kdlab.export.source`). By default the files
go beside the run, one folder per format (:meth:`kdlab.rundir.RunDir.export_dir`)::

    <run>/export/onnx/model.onnx  model.int8.onnx  export.json  MODEL_CARD.md  model_card.json
    <run>/export/torchscript/model.pt ...     <run>/export/exported-program/model.pt2 ...

Each export is verified against PyTorch on real test images of the run's own split (:mod:`kdlab.export.verify`);
a mismatch, an unquantizable model or an int8 model that loses too much accuracy is a :class:`KdlabError`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

import kdlab
from kdlab import files
from kdlab.engine.device import resolve_device
from kdlab.errors import FILE_SYSTEM_ERRORS, KdlabError
from kdlab.export.card import write_card
from kdlab.export.formats import FORMATS, INPUT_NAME, OUTPUT_NAME, get_format, onnx_predictor, torch_predictor
from kdlab.export.quantize import CALIBRATION_IMAGES, INT8_MAX_DROP, calibration_pixels, check_int8, quantize_onnx
from kdlab.export.source import Source, load_source
from kdlab.export.verify import VERIFY_IMAGES, agreement, check_fp32, evaluate_predictor, latencies, reference
from kdlab.report.efficiency import count_parameters, flops_per_image
from kdlab.rundir import EXPORT_RESULT, RunDir

RESULT_FILE = EXPORT_RESULT
__all__ = ["export", "export_run", "FORMATS", "RESULT_FILE", "RESULT_KEYS"]

# What export() returns and writes to export.json (one flat, JSON-friendly dict; sizes in 10^6 bytes, accuracies
# and ECE in %, latencies in ms: median wall time of one pass after warm-up, on the CPU, `threads` threads).
RESULT_KEYS = {
    "format": "onnx | torchscript | exported-program", "file": "the exported fp32 model", "size_mb": "its size",
    "export_dir": "the folder of the files", "results": "this export.json", "model_card": "MODEL_CARD.md",
    "model_card_json": "model_card.json", "source": "the student weights exported", "source_sha256": "their hash",
    "run_dir": "their run (None for a loose file)", "model": "architecture", "params": "parameters",
    "flops_per_image": "forward FLOPs per image", "kdlab_version": "kdlab version", "created": "UTC time",
    "input_name": "input name", "output_name": "output name", "input_shape": "(C, H, W) of one input",
    "mean": "normalization mean (inside the model)", "std": "normalization std (inside the model)",
    "resize": "(H, W) images are resized to before the model, or None",
    "onnx_exporter": "onnx: dynamo or legacy", "onnx_opset": "onnx: the opset",
    "verify_images": "test images compared with PyTorch", "max_abs_diff": "max |logit difference| with PyTorch",
    "top1_agreement": "top-1 agreement with PyTorch", "tolerance": "the max_abs_diff allowed",
    "test_top1": "the exported file's top-1 on the whole test split", "test_ece": "its ECE (15 bins)",
    "test_n": "test images", "runtime": "what ran the exported file",
    "latency_b1_ms": "the exported file at batch 1 (onnxruntime for onnx)", "latency_b64_ms": "... at batch 64",
    "torch_latency_b1_ms": "eager PyTorch at batch 1", "torch_latency_b64_ms": "... at batch 64",
    "threads": "CPU threads of every latency (torch's; onnxruntime intra-op)",
    "int8_file": "the int8 model (None without int8)", "int8_size_mb": "its size", "int8_test_top1": "its top-1",
    "int8_test_ece": "its ECE", "int8_top1_agreement": "top-1 agreement with the fp32 export on the test split",
    "int8_max_abs_diff": "max |logit difference| with the fp32 export", "int8_latency_b1_ms": "onnxruntime",
    "int8_latency_b64_ms": "onnxruntime", "int8_format": "QDQ", "int8_calibration_images": "training images",
    "int8_quantized_ops": "convolutions and matrix products running in int8",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def destination(source: Source, fmt: str, out: str | Path | None) -> Path:
    """The model file to write: ``out`` as a file (it ends like the format's file) or a folder, else the default
    folder beside the run (``<run>/export/<format>``; ``<stem>-<format>`` for another weights file)."""
    filename = FORMATS[fmt].filename
    if out is None:

        return RunDir(source.weights.parent).export_dir(fmt, source.weights.stem) / filename
    out = Path(out)
    return out if out.suffix == Path(filename).suffix else out / filename


def _metadata(source: Source, fmt: str) -> dict[str, str]:
    """What the exported file says about itself (ONNX ``metadata_props``; ``kdlab.json`` in the torch archives)."""
    mean, std = source.normalization
    meta = source.meta
    input_doc = (f"{INPUT_NAME}: float32 [batch, {', '.join(map(str, source.input_shape))}] NCHW, pixels in [0, 1]; "
                 f"normalization (pixels - mean) / std is inside the model")
    values = {
        "kdlab_version": kdlab.__version__, "format": fmt, "architecture": meta.get("model"),
        "model_kwargs": meta.get("model_kwargs", {}), "num_classes": meta.get("num_classes"),
        "class_names": meta.get("class_names"), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": list(source.input_shape), "input_range": [0.0, 1.0], "normalization": "in_graph",
        "mean": list(mean), "std": list(std), "resize": list(source.resize) if source.resize else None,
        "dataset": source.data.name, "epoch": meta.get("epoch"), "source": source.weights.name,
        "run_key": source.run.path.name if source.run else None,
    }
    out = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    out["description"] = f"kdlab {meta.get('model')} student, logits from pixels. {input_doc}"
    return out


def _fp32(source: Source, fmt: str, path: Path, device: torch.device, verify_images: int, threads: int,
          onnx_exporter: str) -> tuple[dict, object]:
    """Write, verify, evaluate and time the float32 export; returns its results and its test logits."""
    spec = get_format(fmt)
    pixels, ref = reference(source, verify_images, device)
    module = source.deployable()
    example = torch.from_numpy(pixels[:2].copy()) if len(pixels) >= 2 else torch.rand(2, *source.input_shape)
    extra = {"exporter": onnx_exporter} if fmt == "onnx" else {}
    unverified = path.with_name(f".{path.stem}.unverified{path.suffix}")
    try:  # only a verified file takes the model's name
        facts = spec.write(module, example, unverified, _metadata(source, fmt), **extra)
        predictor = spec.load(unverified, threads)
        check = check_fp32(predictor, pixels, ref, f"the {fmt} export of {source.weights}")
        metrics, logits = evaluate_predictor(predictor, source.batches("test"))
        os.replace(unverified, path)
    finally:
        unverified.unlink(missing_ok=True)
    if fmt == "onnx":
        # optional package (the export extra): imported when exporting
        import onnxruntime

        runtime = f"onnxruntime {onnxruntime.__version__} CPU"
    else:
        runtime = f"torch {torch.__version__} CPU"
    result = {**facts, **check, **metrics, "file": str(path), "size_mb": path.stat().st_size / 1e6,
              "runtime": runtime, **latencies(predictor, source.input_shape),
              **latencies(torch_predictor(module), source.input_shape, prefix="torch_")}
    return result, logits


def _int8(source: Source, fp32: dict, fp32_logits, path: Path, threads: int, calibration_images: int,
          max_drop: float) -> dict:
    name = source.meta.get("model", "model")
    facts = quantize_onnx(Path(fp32["file"]), path, calibration_pixels(source, calibration_images), name)
    try:
        predictor = onnx_predictor(path, threads)
        metrics, logits = evaluate_predictor(predictor, source.batches("test"))
        result = {**facts, "int8_file": str(path), "int8_size_mb": path.stat().st_size / 1e6,
                  **{f"int8_{k}": v for k, v in {**metrics, **agreement(logits, fp32_logits)}.items()
                     if k != "test_n"}}
        check_int8(result, fp32, name, max_drop)
    except BaseException:
        path.unlink(missing_ok=True)  # no unverified int8 model is left to be shipped
        raise
    return {**result, **latencies(predictor, source.input_shape, prefix="int8_")}


def export(source: str | Path, format: str = "onnx", out: str | Path | None = None, int8: bool = False,
           device: str = "cpu", *, verify_images: int = VERIFY_IMAGES,
           calibration_images: int = CALIBRATION_IMAGES, int8_max_drop: float = INT8_MAX_DROP,
           onnx_exporter: str = "auto", imports: Sequence[str] = (), trust_code: bool = False) -> dict:
    """Export a student (a finished run directory or its ``.safetensors``) to ``format``, verify it, optionally
    quantize it to int8 (ONNX only), write ``export.json`` and the model card; returns the flat results
    (:data:`RESULT_KEYS`).

    ``out``: a folder, or the model file's path (its int8 sibling is ``<stem>.int8.onnx``); default beside the
    run. ``device``: where the PyTorch reference runs (exports are traced on the CPU, and timed there with torch's
    thread count, onnxruntime given as many intra-op threads). ``verify_images``: the first N test images compared
    with PyTorch; ``calibration_images``: training images for int8; ``int8_max_drop``: test top-1 points the int8
    model may lose; ``onnx_exporter``: ``auto`` (dynamo, legacy if dynamo fails), ``dynamo`` or ``legacy``.
    ``imports`` / ``trust_code``: the plug-in modules the student's file may import (``--import``), or any.
    """
    get_format(format)
    if int8 and format != "onnx":
        raise KdlabError(f"int8 quantization is for the onnx format (onnxruntime); got --format {format}")
    torch_device = resolve_device(device)
    src = load_source(source, imports, trust_code)
    path = destination(src, format, out)
    _check_writable(path.parent)
    (path.parent / RESULT_FILE).unlink(missing_ok=True)  # written last: present = a complete, verified export
    threads = torch.get_num_threads()
    result: dict = {"format": format, "source": str(src.weights), "source_sha256": _sha256(src.weights),
                    "run_dir": str(src.run.path) if src.run else None, "export_dir": str(path.parent),
                    "model": src.meta.get("model"), "kdlab_version": kdlab.__version__, "threads": threads,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "input_shape": list(src.input_shape),
                    "mean": list(src.normalization[0]), "std": list(src.normalization[1]),
                    "resize": list(src.resize) if src.resize else None, "int8_file": None}
    fp32, logits = _fp32(src, format, path, torch_device, verify_images, threads, onnx_exporter)
    result.update(fp32)
    int8_path = path.with_name(f"{path.stem}.int8{path.suffix}")
    if int8:
        result.update(_int8(src, fp32, logits, int8_path, threads, calibration_images, int8_max_drop))
    else:
        int8_path.unlink(missing_ok=True)  # a stale one from an earlier --int8 export would contradict export.json

    result.update(params=count_parameters(src.model), flops_per_image=flops_per_image(src.model, src.input_shape))
    result.update(write_card(path.parent, src, result))
    result["results"] = str(path.parent / RESULT_FILE)
    files.write_json(path.parent / RESULT_FILE, result)
    return result


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and write a scratch file there, or raise one line naming it (before any work is done)."""


    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = FILE_SYSTEM_ERRORS.get(exc.errno or 0) or exc.strerror or type(exc).__name__
        raise KdlabError(f"cannot write the export to {folder}: {reason}") from None


# The per-format columns export_run returns (prefixed by the format: onnx_test_top1 ...).
RUN_COLUMNS = ("test_top1", "test_ece", "size_mb", "latency_b1_ms", "latency_b64_ms", "max_abs_diff",
               "top1_agreement")
INT8_COLUMNS = ("test_top1", "test_ece", "size_mb", "latency_b1_ms", "latency_b64_ms", "top1_agreement")


def export_run(run_dir: str | Path, formats: Sequence[str] = ("onnx",), int8: bool = False, device: str = "cpu",
               force: bool = False, imports: Sequence[str] = (), trust_code: bool = False) -> dict:
    """Export a finished run to each of ``formats`` (train-or-load: an ``export.json`` made from the same weights
    and settings is read back, not redone, unless ``force``); returns one flat JSON-friendly dict:

    - ``<fmt>_<col>`` for each format (``exported-program`` becomes ``exported_program``) and each ``col`` of
      :data:`RUN_COLUMNS`: the exported fp32 file's test top-1 / ECE (%), file size (MB), its runtime's CPU latency
      (ms, batch 1 and 64: onnxruntime for ONNX) and its agreement with PyTorch (max |Δlogit|, top-1 %);
    - ``onnx_int8_<col>`` (``int8=True``) for each ``col`` of :data:`INT8_COLUMNS` ("deployable accuracy": the
      int8 model's test top-1, its size and onnxruntime latency; agreement is with the fp32 export);
    - ``torch_latency_b1_ms``, ``torch_latency_b64_ms`` (eager PyTorch, same threads), ``export_threads``;
    - ``<fmt>_dir``: the folder holding the file, ``export.json`` and the model card.
    """
    if int8 and "onnx" not in formats:
        raise KdlabError("int8 quantization needs the onnx format in the export list")
    out: dict = {}
    for fmt in formats:
        result = None if force else _cached(run_dir, fmt, int8)
        result = result or export(run_dir, fmt, int8=int8 and fmt == "onnx", device=device, imports=imports,
                                  trust_code=trust_code)
        key = fmt.replace("-", "_")
        out.update({f"{key}_{c}": result.get(c) for c in RUN_COLUMNS})
        out[f"{key}_dir"] = result["export_dir"]
        if fmt == "onnx" and int8:
            out.update({f"onnx_int8_{c}": result.get(f"int8_{c}") for c in INT8_COLUMNS})
        out.update(torch_latency_b1_ms=result["torch_latency_b1_ms"],
                   torch_latency_b64_ms=result["torch_latency_b64_ms"], export_threads=result["threads"])
    return out


def _cached(run_dir: str | Path, fmt: str, int8: bool) -> Optional[dict]:
    run = RunDir(run_dir)
    path = run.export_dir(fmt) / RESULT_FILE
    try:
        result = json.loads(path.read_text())
        fresh = (result["format"] == fmt and bool(result.get("int8_file")) == (int8 and fmt == "onnx")
                 and result["source_sha256"] == _sha256(run.model) and Path(result["file"]).is_file()
                 and (not result.get("int8_file") or Path(result["int8_file"]).is_file()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if fresh else None


class _CallableModule(types.ModuleType):
    """``kdlab.export(...)`` calls :func:`export` while ``kdlab.export`` stays this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
