"""Post-training static int8 quantization of an ONNX export with onnxruntime, calibrated on training images.

The settings, measured on this lab's CPU (AMD EPYC, AVX2 without VNNI), one ORT thread, CPU time of a pass:

* **QDQ**, not QOperator: ORT fuses each DequantizeLinear -> Conv -> QuantizeLinear unit into the same QLinearConv
  kernel QOperator uses, so both ran within +-2% of each other (batch 64: resnet20 31.1 vs 30.4 ms, mobilenetv2 10.9
  vs 10.8, resnet8 11.5 vs 11.6, cnn_small 7.2 vs 7.6); QDQ is ORT's recommended format and the one other runtimes
  (TensorRT, OpenVINO, QNN) read.
* uint8 activations and int8 weights (U8S8): int8 activations (S8S8) ran 1.8x slower here (no VNNI).
* per-channel weights with ``reduce_range`` (7-bit weights): without it, U8S8 per-channel lost 2 points of top-1 on
  resnet8 (the AVX2 ``vpmaddubsw`` path saturates its 16-bit sums); with it the loss was 0.5 point.
* MinMax calibration over ``calibration_images`` training images spread evenly over the split (no augmentation).
"""

from __future__ import annotations

import tempfile
from typing import Any
from pathlib import Path

import numpy as np

from kdlab.errors import KdlabError
from kdlab.export.formats import INPUT_NAME, first_line
from kdlab.export.source import Source
from kdlab.files import atomic_write

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
INT8_MAX_DROP = 5.0  # points of test top-1 below the fp32 export past which the int8 model is refused
QUANT_FORMAT = "QDQ"


def calibration_pixels(source: Source, images: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Pixels of ``images`` training images spread evenly over the training split."""
    batches = [x.numpy() for x, _ in source.batches("train", images, spread=True)]
    if not batches:
        raise KdlabError(f"the run's training split is empty: nothing to calibrate int8 on ({source.weights})")
    return np.concatenate(batches)


def quantize_onnx(fp32: Path, out: Path, pixels: np.ndarray, model_name: str, quant_format: str = QUANT_FORMAT) -> dict:
    """Write the int8 model of ``fp32`` to ``out``; a :class:`KdlabError` when onnxruntime cannot quantize it."""
    # optional package (the export extra): imported when exporting
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{INPUT_NAME: pixels[i:i + CALIBRATION_BATCH]}
                               for i in range(0, len(pixels), CALIBRATION_BATCH)])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="kdlab-int8-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32), str(pre))  # shape inference + graph fusions, as ORT recommends
            quantize_static(str(pre), str(quantized), Reader(), quant_format=getattr(QuantFormat, quant_format),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=True)
        except Exception as exc:  # noqa: BLE001 - whatever onnxruntime rejects, the model is not quantizable
            raise KdlabError(f"cannot quantize {model_name} to int8 with onnxruntime ({first_line(exc)})") from None
        proto = onnx.load(str(quantized))
        quantized_ops = count_int8_compute(proto)
        if not quantized_ops:
            raise KdlabError(f"cannot quantize {model_name} to int8: onnxruntime quantized none of its convolutions "
                             f"or matrix products")
        del proto.metadata_props[:]
        proto.metadata_props.extend(onnx.load(str(fp32), load_external_data=False).metadata_props)
        atomic_write(out, lambda path: onnx.save_model(proto, path))
    return {"int8_format": quant_format, "int8_calibration_images": len(pixels),
            "int8_quantized_ops": quantized_ops}


def count_int8_compute(proto: Any) -> int:
    """Convolutions and matrix products that run in int8: QOperator's QLinear ops, or (QDQ) those fed by a
    DequantizeLinear, which onnxruntime fuses into an int8 kernel."""
    nodes = proto.graph.node
    dequantized = {out for n in nodes if n.op_type == "DequantizeLinear" for out in n.output}
    return sum(n.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
               or (n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and bool(dequantized & set(n.input[:2])))
               for n in nodes)


def check_int8(int8: dict, fp32: dict, model_name: str, max_drop: float = INT8_MAX_DROP) -> None:
    """Refuse an int8 model whose test top-1 is more than ``max_drop`` points below the fp32 export's."""
    drop = fp32["test_top1"] - int8["int8_test_top1"]
    if not drop <= max_drop:
        raise KdlabError(f"int8 {model_name} loses {drop:.1f} points of test top-1 (fp32 {fp32['test_top1']:.2f}%, "
                         f"int8 {int8['int8_test_top1']:.2f}%, limit {max_drop:g}): not shipped; use the fp32 export")
