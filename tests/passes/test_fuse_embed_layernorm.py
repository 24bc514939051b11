"""fuse_embed_layernorm (level 2): Gather lookups + Adds + LayerNorm -> ecoinfer.EmbedLayerNorm.

Numeric checks compare the optimized graph with onnxruntime on the original model
(check_optimized); structural checks look at what the pass left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import check_optimized
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from ecoinfer.errors import IndexOutOfRangeError

B, S, H, MAXPOS = 2, 5, 24, 16
VOCAB, TYPES = 40, 3
RNG = np.random.default_rng(5)
BERT = Path("/root/.cache/ecoinfer/bert-base-random-seed0.dynamo.torch-2.13.0.onnx")


def _t(name: str, arr) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.asarray(arr), name)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(
    lookups: int = 3,
    assoc: str = "left",
    ln_axis: int = -1,
    bias: bool = True,
    sum_output: bool = False,
    table_input: bool = False,
    extra_add: bool = False,
) -> bytes:
    """BERT embeddings: word (int64 [B, S]) + token type (int32 [B, S]) + position
    (Slice of a constant [1, MAXPOS] to [1, S]), summed, LayerNorm.
      assoc      "left" (w + t) + p, "right" w + (t + p) (3 lookups)
      lookups    2: word + position only
      ln_axis    LayerNorm's axis (1 normalizes [S, H]: S is static here)
      sum_output the sum is also a graph output
      table_input the word table is a graph input, not a weight
      extra_add  a constant added to the sum before the LayerNorm
    """
    mk = helper.make_node
    nodes = [
        mk("Shape", ["input_ids"], ["shp"], start=1, end=2),
        mk("Slice", ["pos_ids", "zero1", "shp", "one1"], ["pos"], name="positions"),
        mk("Gather", ["word", "input_ids"], ["e_w"], name="embed_word"),
        mk("Gather", ["position", "pos"], ["e_p"], name="embed_pos"),
    ]
    if lookups == 3:
        nodes.append(mk("Gather", ["token_type", "token_type_ids"], ["e_t"], name="embed_type"))
        if assoc == "left":
            nodes += [mk("Add", ["e_w", "e_t"], ["s0"]), mk("Add", ["s0", "e_p"], ["s"])]
        else:
            nodes += [mk("Add", ["e_t", "e_p"], ["s0"]), mk("Add", ["e_w", "s0"], ["s"])]
    else:
        nodes.append(mk("Add", ["e_p", "e_w"], ["s"]))
    x = "s"
    if extra_add:
        nodes.append(mk("Add", ["s", "shift"], ["s_shift"]))
        x = "s_shift"
    norm = [S, H] if ln_axis == 1 else [H]
    ln_in = [x, "ln_scale"] + (["ln_bias"] if bias else [])
    nodes.append(mk("LayerNormalization", ln_in, ["y"], axis=ln_axis, epsilon=1e-12, name="ln"))
    inits = [
        _t("position", _w(MAXPOS, H)),
        _t("token_type", _w(TYPES, H)),
        _t("pos_ids", np.arange(MAXPOS, dtype=np.int64)[None]),
        _t("zero1", np.array([0], np.int64)),
        _t("one1", np.array([1], np.int64)),
        _t("ln_scale", _w(*norm) * 0.5 + 1.0),
        _t("ln_bias", _w(*norm) * 0.1),
        _t("shift", _w(H)),
    ]
    seq = S if ln_axis == 1 else "seq"
    inputs = [
        helper.make_tensor_value_info("input_ids", T.INT64, ["batch", seq]),
        helper.make_tensor_value_info("token_type_ids", T.INT32, ["batch", seq]),
    ]
    if table_input:
        inputs.append(helper.make_tensor_value_info("word", T.FLOAT, [VOCAB, H]))
    else:
        inits.append(_t("word", _w(VOCAB, H)))
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, None)]
    if sum_output:
        outputs.append(helper.make_tensor_value_info("s", T.FLOAT, None))
    used = {i for n in nodes for i in n.input}
    g = helper.make_graph(
        nodes, "embeddings", inputs, outputs, initializer=[i for i in inits if i.name in used]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return m.SerializeToString()


def _feeds(table_input: bool = False, negative: bool = False) -> dict[str, np.ndarray]:
    lo = -VOCAB if negative else 0
    feeds = {
        "input_ids": RNG.integers(lo, VOCAB, (B, S)).astype(np.int64),
        "token_type_ids": RNG.integers(0, TYPES, (B, S)).astype(np.int32),
    }
    if negative:
        feeds["input_ids"][0, :2] = [-1, -VOCAB]  # both ends of the negative range
    if table_input:
        feeds["word"] = _w(VOCAB, H)
    return feeds


def _counts(reports) -> dict[str, int]:  # noqa: ANN001
    return dict(next(r for r in reports if r.name == "fuse_embed_layernorm").counts)


def _fused(g):  # noqa: ANN001, ANN202
    return [n for n in g.nodes if n.op_type == "EmbedLayerNorm" and n.domain == "ecoinfer"]


# ------------------------------------------------------------------------------ fused
@pytest.mark.parametrize("assoc", ["left", "right"])
def test_bert_embeddings_become_one_node(assoc: str) -> None:
    """int64 word ids, int32 token types, [1, S] positions computed by a Slice."""
    g, reports = check_optimized(_model(assoc=assoc), _feeds())
    assert _counts(reports) == {"embed_layernorm": 1, "lookups": 3}
    (n,) = _fused(g)
    assert not [x for x in g.nodes if x.op_type in ("Gather", "Add", "LayerNormalization")]
    assert n.outputs == ["y"] and n.attrs["num_lookups"] == 3
    assert n.attrs["epsilon"] == pytest.approx(1e-12)
    tables = n.inputs[1:6:2]
    assert sorted(tables) == ["position", "token_type", "word"]
    ids = dict(zip(tables, n.inputs[0:6:2]))
    assert ids["word"] == "input_ids" and ids["token_type"] == "token_type_ids"
    assert g.producers()[ids["position"]].op_type == "Slice"
    assert g.values["y"].shape == ("batch", "seq", H) and g.values["y"].dtype == "float32"


def test_two_lookups_without_bias() -> None:
    g, reports = check_optimized(_model(lookups=2, bias=False), _feeds())
    assert _counts(reports) == {"embed_layernorm": 1, "lookups": 2}
    (n,) = _fused(g)
    assert len(n.inputs) == 5  # two (ids, table) pairs and the scale


def test_negative_ids_count_from_the_end() -> None:
    g, _ = check_optimized(_model(), _feeds(negative=True))
    assert len(_fused(g)) == 1


def test_out_of_range_ids_raise_on_the_reference_path() -> None:
    from ecoinfer.api import Model
    from ecoinfer.frontend.onnx import import_onnx
    from ecoinfer.passes import OptimizeConfig, optimize

    g, _ = optimize(import_onnx(_model()), OptimizeConfig(level=2))
    feeds = _feeds()
    feeds["input_ids"][1, 3] = VOCAB
    with pytest.raises(IndexOutOfRangeError, match=f"'input_ids' holds index {VOCAB}"):
        Model(g).run(feeds)


def test_engine_input_check_still_sees_the_tables() -> None:
    """The runtime checks graph inputs that index tables (the GPU kernel cannot raise)."""
    from ecoinfer.frontend.onnx import import_onnx
    from ecoinfer.ir.analysis import index_table_sizes
    from ecoinfer.passes import OptimizeConfig, optimize

    g, _ = optimize(import_onnx(_model()), OptimizeConfig(level=2))
    assert _fused(g)
    assert index_table_sizes(g) == {"input_ids": VOCAB, "token_type_ids": TYPES}


def test_the_pass_off_leaves_the_gathers() -> None:
    g, _ = check_optimized(_model(), _feeds(), disable=("fuse_embed_layernorm",))
    assert not _fused(g)
    assert sum(n.op_type == "Gather" for n in g.nodes) == 3


# ------------------------------------------------------------------------------ refused
@pytest.mark.parametrize(
    ("case", "kw"),
    [
        ("sum read elsewhere", {"sum_output": True}),
        ("LayerNorm over [S, H]", {"ln_axis": 1}),
        ("table is a graph input", {"table_input": True}),
        ("a constant added to the sum", {"extra_add": True}),
    ],
)
def test_not_fused(case: str, kw: dict) -> None:
    feeds = _feeds(table_input=kw.get("table_input", False))
    if kw.get("ln_axis") == 1:
        feeds = {k: v[:, :S] for k, v in feeds.items()}
    g, reports = check_optimized(_model(**kw), feeds)
    assert _counts(reports) == {}, case
    assert not _fused(g)
    assert any(n.op_type == "LayerNormalization" for n in g.nodes)


def test_gather_on_axis_1_is_not_fused() -> None:
    """Tables [R, V] gathered along axis 1 (columns), summed and normalized over S."""
    mk = helper.make_node
    nodes = [
        mk("Gather", ["ta", "ia"], ["ea"], axis=1),
        mk("Gather", ["tb", "ib"], ["eb"], axis=1),
        mk("Add", ["ea", "eb"], ["s"]),
        mk("LayerNormalization", ["s", "scale"], ["y"], axis=-1),
    ]
    inits = [_t("ta", _w(4, 9)), _t("tb", _w(4, 7)), _t("scale", _w(S))]
    ins = [helper.make_tensor_value_info(n, T.INT64, [S]) for n in ("ia", "ib")]
    g = helper.make_graph(
        nodes, "cols", ins, [helper.make_tensor_value_info("y", T.FLOAT, None)], inits
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    feeds = {"ia": RNG.integers(0, 9, S), "ib": RNG.integers(0, 7, S)}
    opt, reports = check_optimized(m.SerializeToString(), feeds)
    assert _counts(reports) == {} and not _fused(opt)


# ------------------------------------------------------------------------------ real exports
def test_minilm_embeddings_fuse(minilm) -> None:  # noqa: ANN001
    """The real export: one EmbedLayerNorm over the three tables, and no Gather reads them;
    the optimized model still matches onnxruntime."""
    path, feeds = minilm
    g, reports = check_optimized(path, feeds)
    assert _counts(reports) == {"embed_layernorm": 1, "lookups": 3}
    (n,) = _fused(g)
    tables = set(n.inputs[1:6:2])
    assert all(t.startswith("embeddings.") and t.endswith("_embeddings.weight") for t in tables)
    assert not [x for x in g.nodes if x.op_type == "Gather" and x.inputs[0] in tables]


@pytest.mark.skipif(not BERT.exists(), reason="no cached BERT-base export")
def test_bert_base_embeddings_fuse() -> None:
    """Structure only (the numeric check is MiniLM's: the same exporter and modules)."""
    from ecoinfer.frontend.onnx import import_onnx
    from ecoinfer.passes import OptimizeConfig, optimize

    g, reports = optimize(import_onnx(BERT), OptimizeConfig(level=2))
    assert _counts(reports) == {"embed_layernorm": 1, "lookups": 3}
    (n,) = _fused(g)
    tables = set(n.inputs[1:6:2])
    assert len(tables) == 3
    assert not [x for x in g.nodes if x.op_type == "Gather" and x.inputs[0] in tables]
