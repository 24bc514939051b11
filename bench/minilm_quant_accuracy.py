"""Accuracy of quantized all-MiniLM-L6-v2 (real weights) against FP32, on the CPU (exact
emulation of the GPU's INT8/FP8 arithmetic), for a grid of precision x smoothing.

    python bench/minilm_quant_accuracy.py [--precisions int8,fp8] [--smooth 0,0.5,0.8]
        [--calib-method entropy] [--json OUT.json]

The sentences, batches and metric are tests/quant/test_accuracy_minilm.py's: 256 calibration
sentences (standard-library docstrings), 128 held-out sentences from other modules, batches of
32 padded to 64 tokens; the metric is the mean cosine of the mask-aware mean-pooled
last_hidden_state to FP32's. Quantization is what `ecoinfer build --int8|--fp8 --calib-data ...
[--smooth A]` runs (quantize_for_build), FP8 builds quantizing attention's QKV too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "quant")]  # the accuracy test's helpers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="int8,fp8")
    ap.add_argument("--smooth", default="0,0.5,0.8", help="SmoothQuant alphas (0: none)")
    ap.add_argument("--calib-method", default=None, help="default: the build's per precision")
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu: the Q/DQ graph, exactly emulated; cuda: an engine built as `ecoinfer build "
        "--fp16 --int8|--fp8` would build it (quantized tactics, linked codes, float layers "
        "FP16), run on the GPU",
    )
    ap.add_argument("--json")
    a = ap.parse_args()

    from test_accuracy_minilm import (  # noqa: PLC0415
        N_CALIB,
        N_HELD,
        _outputs,
        _spread,
        _tokenize,
        _write_npz,
        pooled_cosine,
    )
    from test_quantize import CAL_MODULES, HELD_MODULES, stdlib_sentences  # noqa: PLC0415

    import ecoinfer.models.minilm as mm  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415
    from ecoinfer.passes.manager import OptimizeConfig, optimize  # noqa: PLC0415
    from ecoinfer.quant.budget import QuantizeOptions, quantize_for_build  # noqa: PLC0415

    start = time.perf_counter()

    def stage(what: str) -> None:  # a run cut off by a time limit still shows how far it got
        print(f"[{time.perf_counter() - start:6.1f} s] {what}", flush=True)

    tok = mm.load_minilm_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="minilm_acc_"))
    stage("exporting MiniLM to ONNX")
    path = mm.export_minilm_onnx(tmp / "minilm.onnx", dynamo=True, tokenizer=tok)
    stage("optimizing")
    graph, _ = optimize(import_onnx(str(path)), OptimizeConfig(level=2))
    pool = stdlib_sentences(CAL_MODULES, 10**9)
    calib_dir = _write_npz(tmp / "calib", _tokenize(tok, _spread(pool[0::2], N_CALIB)))
    held = _tokenize(tok, stdlib_sentences(HELD_MODULES, N_HELD))
    stage("FP32 reference outputs of the held-out sentences")
    ref = _outputs(graph, held)
    rows = []
    for prec in a.precisions.split(","):
        for alpha in (float(s) for s in a.smooth.split(",")):
            t0 = time.perf_counter()
            stage(
                f"{prec}, smooth {alpha:g}: calibrating and quantizing"
                + (", then building and tuning the GPU engine" if a.device == "cuda" else "")
            )
            opts = QuantizeOptions(
                precision=prec,
                calib_data=calib_dir,
                calib_method=a.calib_method,
                smooth_alpha=alpha or None,
            )
            if a.device == "cpu":
                qgraph, report = quantize_for_build(graph, opts)
                cos = pooled_cosine(_outputs(qgraph, held), ref, held)
            else:
                eng = _engine(path, opts, held[0])
                report = eng.report["quantization"]
                outs = [{k: np.asarray(v, np.float64) for k, v in eng.run(b).items()} for b in held]
                cos = pooled_cosine(outs, ref, held)
            row = {
                "device": a.device,
                "precision": prec,
                "smooth_alpha": alpha,
                "calib_method": report.get("calibrator"),
                "quantized_layers": len(report.get("quantized_layers", [])),
                "pooled_cosine": cos,
                "seconds": time.perf_counter() - t0,
            }
            if a.device == "cuda":  # what the engine ran: layers on their FP16 twin, links
                fast = report.get("float_for_speed", [])
                row["float_for_speed"] = [f["layer"] for f in fast]
                row["linked_codes"] = len(report.get("linked_codes", []))
            rows.append(row)
            ran = (f", {len(row['float_for_speed'])} run on FP16 kernels (faster)"
                   if "float_for_speed" in row else "")  # fmt: skip
            print(f"{prec:5s} smooth {alpha:<4} {row['calib_method']}: {row['quantized_layers']} layers{ran}, "
                  f"pooled cosine {cos:.5f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"held_out": N_HELD, "rows": rows}, indent=1))
    return 0


def _engine(path: Path, opts: object, feeds: dict) -> object:
    """A GPU engine for exactly these batch shapes: float layers FP16, `opts` quantizing."""
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    shp = {k: tuple(v.shape) for k, v in feeds.items()}
    cfg = BuildConfig(
        device="cuda", precision="float16", quant=opts, profiles=[ShapeProfile(shp, shp, shp)]
    )
    return build(str(path), cfg)


if __name__ == "__main__":
    sys.exit(main())
