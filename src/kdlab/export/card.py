"""The model card beside an export: ``model_card.json`` (for tools) and ``MODEL_CARD.md`` (for people).

Everything in it comes from the checkpoint's metadata, the run's ``config.yaml`` (teacher, method and its
parameters, schedule) and the export's own measurements (test metrics of the exported fp32 and int8 files, their
agreement with PyTorch, sizes and CPU latency).
"""

from __future__ import annotations

import json
from pathlib import Path

from kdlab import files
from kdlab.export.source import Source

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"


def _training(source) -> dict:
    cfg = (source.run.read_config() if source.run is not None else None) or {}
    method = cfg.get("method") or {}
    params = method.get("params") or {}
    return {"teacher": cfg.get("teacher"), "method": method.get("name"), "method_params": params,
            "epochs": cfg.get("epochs"), "seed": cfg.get("seed"), "optimizer": cfg.get("optim"),
            "precision": source.meta.get("precision"), "checkpoint_epoch": source.meta.get("epoch"),
            "config_found": bool(cfg)}


def card_data(source: Source, result: dict) -> dict:
    """The card as a JSON-friendly dict, from the loaded source and the export's flat result."""
    meta = source.meta
    metrics = {"fp32": {k: result.get(k) for k in ("test_top1", "test_ece", "test_n", "size_mb", "latency_b1_ms",
                                                   "latency_b64_ms")},
               "pytorch": {"latency_b1_ms": result.get("torch_latency_b1_ms"),
                           "latency_b64_ms": result.get("torch_latency_b64_ms")}}
    if result.get("int8_file"):
        metrics["int8"] = {k: result.get(f"int8_{k}") for k in ("test_top1", "test_ece", "size_mb", "latency_b1_ms",
                                                                "latency_b64_ms", "top1_agreement", "format",
                                                                "calibration_images")}
    return {
        "model": {"architecture": meta.get("model"), "kwargs": meta.get("model_kwargs", {}),
                  "params": result["params"], "flops_per_image": result["flops_per_image"],
                  "num_classes": meta.get("num_classes"), "class_names": meta.get("class_names")},
        "training": _training(source),
        "data": {"dataset": source.data.name, "settings": meta.get("dataset"),
                 "test_images": result.get("test_n"),
                 "int8_calibration": f"{result['int8_calibration_images']} training images (MinMax)"
                 if result.get("int8_file") else None},
        "input": {"name": result["input_name"], "dtype": "float32", "layout": "NCHW",
                  "shape": ["batch", *result["input_shape"]], "range": [0.0, 1.0],
                  "normalization": "inside the model: (pixels - mean) / std", "mean": result["mean"],
                  "std": result["std"], "resize_to": result["resize"]},
        "output": {"name": result["output_name"], "shape": ["batch", meta.get("num_classes")],
                   "meaning": "logits (apply softmax for probabilities)"},
        "export": {k: result.get(k) for k in ("format", "file", "int8_file", "onnx_exporter", "onnx_opset",
                                              "runtime", "threads")},
        "verification": {k: result.get(k) for k in ("verify_images", "max_abs_diff", "top1_agreement",
                                                    "tolerance")},
        "metrics": metrics,
        "provenance": {"kdlab_version": result["kdlab_version"], "run_dir": result.get("run_dir"),
                       "run_key": Path(result["run_dir"]).name if result.get("run_dir") else None,
                       "weights": result["source"], "weights_sha256": result["source_sha256"],
                       "created": result["created"]},
    }


def _num(value, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _metrics_table(card: dict) -> list[str]:
    m, fp32 = card["metrics"], card["metrics"]["fp32"]
    runtime = card["export"]["runtime"]
    rows = ["| | test top-1 (%) | ECE (%) | size (MB) | latency b1 (ms) | latency b64 (ms) | top-1 agreement (%) |",
            "|---|---|---|---|---|---|---|",
            f"| PyTorch (eager, fp32) | – | – | – | {_num(m['pytorch']['latency_b1_ms'], 3)} | "
            f"{_num(m['pytorch']['latency_b64_ms'], 2)} | reference |",
            f"| {card['export']['format']} fp32 ({runtime}) | {_num(fp32['test_top1'])} | {_num(fp32['test_ece'])} | "
            f"{_num(fp32['size_mb'], 3)} | {_num(fp32['latency_b1_ms'], 3)} | {_num(fp32['latency_b64_ms'], 2)} | "
            f"{_num(card['verification']['top1_agreement'])} |"]
    if "int8" in m:
        q = m["int8"]
        rows.append(f"| onnx int8 {q['format']} ({runtime}) | {_num(q['test_top1'])} | {_num(q['test_ece'])} | "
                    f"{_num(q['size_mb'], 3)} | {_num(q['latency_b1_ms'], 3)} | {_num(q['latency_b64_ms'], 2)} | "
                    f"{_num(q['top1_agreement'])} vs fp32 |")
    return rows


def card_markdown(card: dict) -> str:
    model, train, inp, ver = card["model"], card["training"], card["input"], card["verification"]
    prov = card["provenance"]
    method = train["method"] or "unknown"
    params = json.dumps(train["method_params"], sort_keys=True) if train["method_params"] else "default parameters"
    size = "x".join(str(s) for s in inp["shape"][1:])
    resize = (f"resize to {inp['resize_to'][0]}x{inp['resize_to'][1]} (bilinear, antialiased when shrinking), "
              if inp["resize_to"] else "")
    lines = [
        f"# Model card: {model['architecture']} ({method}) on {card['data']['dataset']}", "",
        "## Model", "",
        f"- Architecture: `{model['architecture']}` {json.dumps(model['kwargs']) if model['kwargs'] else ''}".rstrip(),
        f"- Parameters: {model['params']:,}; forward FLOPs per image: {model['flops_per_image']:,}",
        f"- Classes ({model['num_classes']}): {', '.join(model['class_names'] or [])}", "",
        "## Training", "",
        f"- Teacher: {train['teacher'] or 'none'}",
        f"- Method: `{method}` ({params})",
        f"- Epochs: {train['epochs']}, seed {train['seed']}, checkpoint of epoch {train['checkpoint_epoch']}", "",
        "## Input and preprocessing", "",
        f"- Input `{inp['name']}`: float32 `[batch, {size.replace('x', ', ')}]` (NCHW), pixel values in [0, 1] "
        f"(uint8 / 255); the batch size is free.",
        f"- Preprocessing outside the model: {resize}scale to [0, 1]. Normalization is **inside** the model: "
        f"`(pixels - mean) / std` with mean {inp['mean']}, std {inp['std']}.",
        f"- Output `{card['output']['name']}`: `[batch, {model['num_classes']}]` logits; softmax gives probabilities.",
        "",
        f"## Test metrics ({card['data']['test_images']} test images of the run's own split)", "",
        *_metrics_table(card), "",
        f"Latency: median wall time of one pass after warm-up, on this host's CPU with {card['export']['threads']} "
        f"thread(s), random inputs. ECE: 15 equal-width bins.", "",
        "## Verification", "",
        f"The exported file and the PyTorch model agree on {ver['verify_images']} real test images: max |logit "
        f"difference| {_num(ver['max_abs_diff'], 8)} (tolerance {_num(ver['tolerance'], 6)}), top-1 agreement "
        f"{_num(ver['top1_agreement'])}%.", "",
        "## Provenance", "",
        f"- kdlab {prov['kdlab_version']}; export format `{card['export']['format']}`"
        + (f", opset {card['export']['onnx_opset']} ({card['export']['onnx_exporter']} exporter)"
           if card['export'].get('onnx_opset') else ""),
        f"- Run: `{prov['run_dir']}` (key `{prov['run_key']}`)" if prov["run_dir"] else "- Run: unknown (loose file)",
        f"- Weights: `{prov['weights']}` (sha256 {prov['weights_sha256'][:16]}…), exported {prov['created']}", "",
    ]
    return "\n".join(lines)


def write_card(directory: Path, source: Source, result: dict) -> dict[str, str]:
    card = card_data(source, result)
    files.write_json(directory / CARD_JSON, card)
    files.write_text(directory / CARD_MD, card_markdown(card))
    return {"model_card": str(directory / CARD_MD), "model_card_json": str(directory / CARD_JSON)}
