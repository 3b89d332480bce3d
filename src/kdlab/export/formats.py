"""The export formats: write the deployable module to a file with its metadata, and load it back to run it.

``onnx``
    torch.onnx's dynamo exporter (``torch.export`` capture), opset 18, a dynamic batch axis, the weights inside the one
    ``.onnx`` file, metadata in ``metadata_props``. Measured here on 12 architectures (cnn, resnet, wrn, vgg,
    mobilenetv2/v3, shufflenetv1/v2, efficientnet_b0, resnet18): the TorchScript-based ("legacy") exporter is 10-25x
    faster (0.1-1.2 s against 2-20 s per model) and onnxruntime runs both graphs equally fast, but it is deprecated
    ("will be removed"), traces one path of any data-dependent Python silently where ``torch.export`` refuses, and
    failed on ``cnn_small``'s 7x7 -> 4x4 adaptive pool (see :func:`export_friendly`). So dynamo, with legacy only
    as the fallback for a model ``torch.export`` cannot capture (the result says which ran; both are verified).
    Opset 18: the dynamo exporter's native opset (its conversion down to 17 fails on ReduceMean's axes input, the
    one op of these models that changed in 18); onnxruntime reads it since 1.14 (2023), as do current TensorRT and
    OpenVINO releases.
``torchscript``
    ``torch.jit.trace`` (``script`` would reject most models' Python), metadata as the archive's ``kdlab.json``.
    TorchScript is deprecated upstream; it is here for runtimes that only read it (LibTorch, older mobile).
``exported-program``
    ``torch.export`` saved as ``.pt2`` with a dynamic batch axis, metadata as its ``kdlab.json`` extra file.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, cast

import numpy as np
import torch
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.files import atomic_write

ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
MAX_BATCH = 1 << 16
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch.__trace", "torch.fx", "torch._dynamo", "onnxscript")
Predictor = Callable[[np.ndarray], np.ndarray]  # float32 pixels [N, C, H, W] -> float32 logits [N, K]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines (failures still raise)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# -- ONNX -------------------------------------------------------------------------------------------------------------
class MatmulAdaptivePool(nn.Module):
    """``AdaptiveAvgPool2d`` for one known input size as two matrix products: ``P_h @ x @ P_w^T``.

    Exact (the same bins as PyTorch: start ``floor(i * in / out)``, end ``ceil((i + 1) * in / out)``). Exporters
    turn an adaptive pool whose output does not divide its input into a gather/where decomposition that took a third
    of ``cnn_small``'s ONNX run time; two MatMuls are cheap and quantize.
    """

    rows: Tensor  # buffers
    cols_t: Tensor

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _pool_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols_t", _pool_matrix(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _pool_matrix(size_in: int, size_out: int) -> Tensor:
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def export_friendly(module: nn.Module, example: Tensor) -> nn.Module:
    """``module`` with each adaptive average pool whose output size does not divide its input replaced by
    :class:`MatmulAdaptivePool` (a copy when anything changes; the input size is fixed by ``example``)."""
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            seen.setdefault(name, tuple(args[0].shape[-2:]))
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in module.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    uneven = {}
    for name, in_hw in seen.items():
        pool = module.get_submodule(name)
        assert isinstance(pool, nn.AdaptiveAvgPool2d)  # only those are hooked
        size = pool.output_size
        wanted = size if isinstance(size, tuple) else (size, size)
        out_hw = (wanted[0] if wanted[0] is not None else in_hw[0], wanted[1] if wanted[1] is not None else in_hw[1])
        if any(i % o for i, o in zip(in_hw, out_hw)):
            uneven[name] = MatmulAdaptivePool(in_hw, out_hw)
    if not uneven:
        return module
    module = copy.deepcopy(module)
    for name, replacement in uneven.items():
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, replacement)
    return module


def _onnx_dynamo(module: nn.Module, example: Tensor):
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=ONNX_OPSET, external_data=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True, verbose=False,
                                dynamic_shapes={"pixels": {0: batch}})
    assert program is not None  # with dynamo=True, export returns the program
    return program.model_proto


def _onnx_legacy(module: nn.Module, example: Tensor):
    # optional package (the export extra): imported when exporting
    import onnx

    buffer = io.BytesIO()
    # cast: torch annotates the destination as a path, but its legacy exporter also writes to a binary file object
    torch.onnx.export(module, (example,), cast(Any, buffer), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def write_onnx(module: nn.Module, example: Tensor, path: Path, metadata: dict[str, str],
               exporter: str = "auto") -> dict:
    """Export to ONNX (``exporter``: ``auto`` = dynamo, then legacy if dynamo cannot capture the model)."""
    # optional package (the export extra): imported when exporting
    import onnx

    module = export_friendly(module, example)
    errors = []
    for name, fn in (("dynamo", _onnx_dynamo), ("legacy", _onnx_legacy)):
        if exporter not in ("auto", name):
            continue
        try:
            with quiet():
                proto = fn(module, example)
            break
        except Exception as exc:  # noqa: BLE001 - any exporter failure is "this model does not export"
            errors.append(f"{name}: {first_line(exc)}")
    else:
        raise KdlabError(f"cannot export to ONNX ({'; '.join(errors) or f'unknown exporter {exporter!r}'})")
    for node in proto.graph.node:  # stack traces with local paths and FX dumps: not for shipping
        del node.metadata_props[:]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = metadata.get("description", "")
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    return {"onnx_exporter": name, "onnx_opset": _opset(proto)}


def _opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def read_onnx_metadata(path: Path) -> dict[str, str]:
    # optional package (the export extra): imported when exporting
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def ort_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (and one inter-op thread)."""
    # optional package (the export extra): imported when exporting
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(path: Path, threads: int) -> Predictor:
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# -- TorchScript and ExportedProgram ----------------------------------------------------------------------------------
def write_torchscript(module: nn.Module, example: Tensor, path: Path, metadata: dict[str, str]) -> dict:
    try:
        with quiet(), torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception as exc:  # noqa: BLE001
        raise KdlabError(f"cannot trace the model to TorchScript ({first_line(exc)})") from None
    extra = {"kdlab.json": json.dumps(metadata, sort_keys=True)}
    with quiet():
        atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files=extra))
    return {}


def torchscript_predictor(path: Path, threads: int) -> Predictor:
    with quiet():
        module = torch.jit.load(str(path), map_location="cpu")
    return _torch_predictor(module)


def write_exported_program(module: nn.Module, example: Tensor, path: Path, metadata: dict[str, str]) -> dict:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with quiet():
            program = torch.export.export(module, (example,), dynamic_shapes={"pixels": {0: batch}})
    except Exception as exc:  # noqa: BLE001
        raise KdlabError(f"torch.export cannot capture the model ({first_line(exc)})") from None
    extra = {"kdlab.json": json.dumps(metadata, sort_keys=True)}
    with quiet():
        atomic_write(path, lambda tmp: torch.export.save(program, tmp, extra_files=extra))
    return {}


def exported_program_predictor(path: Path, threads: int) -> Predictor:
    with quiet():
        module = torch.export.load(str(path)).module()
    return _torch_predictor(module)


def _torch_predictor(module: Callable[[Tensor], Tensor]) -> Predictor:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()
    return run


def torch_predictor(module: nn.Module) -> Predictor:
    """The eager PyTorch module as a predictor (the reference the exports are timed against)."""
    return _torch_predictor(module.eval())


@dataclass(frozen=True)
class Format:
    name: str
    filename: str
    write: Callable[..., dict]  # (module, example, path, metadata) -> extra facts (opset, exporter)
    load: Callable[[Path, int], Predictor]  # (path, threads) -> predictor


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", "model.onnx", write_onnx, onnx_predictor),
    "torchscript": Format("torchscript", "model.pt", write_torchscript, torchscript_predictor),
    "exported-program": Format("exported-program", "model.pt2", write_exported_program, exported_program_predictor),
}


def get_format(name: str) -> Format:
    """The format called ``name``, its optional packages checked (a :class:`KdlabError` naming the fix)."""
    if name not in FORMATS:
        raise KdlabError(f"unsupported export format {name!r}; choose one of: {', '.join(FORMATS)}")
    if name == "onnx":

        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise KdlabError(f"the onnx format needs {', '.join(missing)}: pip install 'kdlab[export]'")
    return FORMATS[name]
