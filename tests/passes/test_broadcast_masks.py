"""broadcast_masks (level 2): a row-invariant attention mask is recomputed as one row.

Numeric checks compare the optimized graph with onnxruntime on the original model
(check_optimized); structural checks look at the mask shape the attention reads.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import EXPORTERS, check_optimized
from onnx import TensorProto as T
from onnx import helper, numpy_helper

B, H, S, D = 2, 3, 5, 4
RNG = np.random.default_rng(11)


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _in(name: str, shape, dtype=T.FLOAT) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(query_term: str) -> bytes:
    """transformers' sdpa mask: And(query term [.., S, 1 or S], padding [B, 1, 1, S]) ->
    Where(keep, 0, -1e4) -> the scores' additive mask. query_term:
      "ge0"    arange(S)[:, None] >= 0        (true everywhere: one row suffices)
      "ge1"    arange(S)[:, None] >= 1        (false on row 0: rows differ)
      "causal" arange(S)[:, None] >= arange(S)[None, :]
    """
    mk = helper.make_node
    nodes = [
        mk("Shape", ["m"], ["shp"], start=1, end=2),
        mk("Squeeze", ["shp"], ["n"]),
        mk("Range", ["zero", "n", "one"], ["ar"]),
        mk("Unsqueeze", ["ar", "axes_q"], ["ar_q"]),  # [1, 1, S, 1]
    ]
    if query_term == "causal":
        nodes += [
            mk("Unsqueeze", ["ar", "axes_k"], ["ar_k"]),  # [1, 1, 1, S]
            mk("GreaterOrEqual", ["ar_q", "ar_k"], ["qterm"]),
        ]
    else:
        nodes.append(mk("GreaterOrEqual", ["ar_q", query_term[-1] + "_c"], ["qterm"]))
    nodes += [
        mk("And", ["true", "qterm"], ["qt"]),
        mk("Cast", ["m"], ["mb"], to=T.BOOL),
        mk("Unsqueeze", ["mb", "axes12"], ["pad"]),  # [B, 1, 1, S]
        mk("And", ["qt", "pad"], ["keep"]),
        mk("Where", ["keep", "fzero", "ninf"], ["mask"]),
        mk("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        mk("MatMul", ["q", "kt"], ["qk"]),
        mk("Mul", ["qk", "scale"], ["sc"]),
        mk("Add", ["sc", "mask"], ["s"]),
        mk("Softmax", ["s"], ["p"], axis=-1),
        mk("MatMul", ["p", "v"], ["y"]),
    ]
    inits = [
        _t("zero", np.array(0, np.int64)),
        _t("one", np.array(1, np.int64)),
        _t("0_c", np.array(0, np.int64)),
        _t("1_c", np.array(1, np.int64)),
        _t("axes_q", np.array([0, 1, 3], np.int64)),
        _t("axes_k", np.array([0, 1, 2], np.int64)),
        _t("axes12", np.array([1, 2], np.int64)),
        _t("true", np.array(True)),
        _t("fzero", np.array(0.0, np.float32)),
        _t("ninf", np.array(-10000.0, np.float32)),  # finite: "ge1" masks all of row 0
        _t("scale", np.array(D**-0.5, np.float32)),
    ]
    qkv = [_in(n, ["batch", H, "seq", D]) for n in "qkv"]
    g = helper.make_graph(
        nodes,
        "sdpa_mask",
        [*qkv, _in("m", ["batch", "seq"], T.INT64)],
        [helper.make_tensor_value_info("y", T.FLOAT, None)],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return m.SerializeToString()


def _feeds() -> dict[str, np.ndarray]:
    feeds = {n: RNG.standard_normal((B, H, S, D)).astype(np.float32) for n in "qkv"}
    feeds["m"] = np.array([[1] * S, [1, 1, 1, 0, 0]], np.int64)
    return feeds


def _attention(g):  # noqa: ANN001, ANN202
    (att,) = [n for n in g.nodes if n.op_type == "Attention" and n.domain == "ecoinfer"]
    return att


def _counts(reports) -> dict[str, int]:  # noqa: ANN001
    return dict(next(r for r in reports if r.name == "broadcast_masks").counts)


def test_padding_mask_with_an_always_true_query_term_becomes_one_row() -> None:
    g, reports = check_optimized(_model("ge0"), _feeds())
    assert _counts(reports) == {"masks": 1}
    assert g.values[_attention(g).inputs[3]].shape == ("batch", 1, 1, "seq")


@pytest.mark.parametrize("term", ["ge1", "causal"])
def test_masks_that_differ_by_row_are_left_alone(term: str) -> None:
    g, reports = check_optimized(_model(term), _feeds())
    assert _counts(reports) == {}
    assert g.values[_attention(g).inputs[3]].shape[-2:] == ("seq", "seq")


def test_the_pass_off_keeps_every_row() -> None:
    g, _ = check_optimized(_model("ge0"), _feeds(), disable=("broadcast_masks",))
    assert g.values[_attention(g).inputs[3]].shape[-2:] == ("seq", "seq")


@pytest.mark.parametrize("exporter", ["dynamo"])
def test_minilm_masks_become_one_row(minilm_export, exporter: str) -> None:  # noqa: ANN001
    """The real export (transformers' mask utilities): all 6 layers read one row, and the
    optimized model still matches onnxruntime."""
    path, feeds = minilm_export(EXPORTERS[exporter])
    g, reports = check_optimized(path, feeds)
    mha = [n for n in g.nodes if n.op_type == "MultiHeadAttention"]
    assert _counts(reports) == {"masks": 6} and len(mha) == 6
    assert {g.values[n.inputs[3]].shape[-2] for n in mha} == {1}
