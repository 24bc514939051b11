"""engine/link_norm.py: a LayerNormCodes whose Y only a QGemm's residual reads writes its row
statistics instead, and the QGemm rebuilds Y. On the CPU the builder is forced to keep the
link (the GPU decides by timing); the engine must compute what it computed before."""

from __future__ import annotations

import numpy as np
import torch
from test_link_codes import ln_mlp_model

from ecoinfer.engine import link_codes, link_norm
from ecoinfer.engine.builder import load_engine
from ecoinfer.kernels.torch_ops.fused_quant import norm_from_stats


def _block(tmp_path):  # noqa: ANN001, ANN202
    """y = fc2(relu(fc1(LayerNorm(x)))) + LayerNorm(x): an FFN block, residual included."""
    rng = np.random.default_rng(7)
    return ln_mlp_model(tmp_path, rng, 16, residual=True), rng


def test_the_norm_stops_writing_y_and_the_gemm_rebuilds_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    make, rng = _block(tmp_path)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    linked = make(link_codes=True)
    assert linked.report["norm_residual"] == []  # off unless asked
    eng = make(link_codes=True, link_norm=True)
    assert eng.report["norm_residual"] == [{"norm": "ln", "gemm": "fc2"}]
    norm = next(n for n in eng.graph.nodes if n.op_type == "LayerNormCodes")
    gemm = next(n for n in eng.graph.nodes if n.name == "fc2")
    assert norm.outputs[0] == "" and all(norm.outputs[1:4])
    assert gemm.inputs[5] == norm.inputs[0] and gemm.inputs[7:9] == norm.outputs[2:4]
    x = {"x": (rng.standard_normal((8, 16)) * 2).astype(np.float32)}
    np.testing.assert_allclose(eng.run(x)["y"], linked.run(x)["y"], rtol=1e-5, atol=1e-5)
    path = tmp_path / "ffn.eng"  # the plan round-trips through the engine file
    eng.save(str(path))
    np.testing.assert_allclose(load_engine(str(path)).run(x)["y"], eng.run(x)["y"], rtol=0, atol=0)


def test_tried_after_a_fused_elementwise_node(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The plan runs on its reference kernels to find the pairs' inputs; a FusedElementwise
    there runs its body (on a GPU build this failed: "norm links not tried")."""
    rng = np.random.default_rng(5)
    make = ln_mlp_model(tmp_path, rng, 16, residual=True, pre=True)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    eng = make(link_codes=True, link_norm=True)
    assert "FusedElementwise" in [n.op_type for n in eng.graph.nodes]
    assert not [w for w in eng.warnings if "norm links" in w]
    assert eng.report["norm_residual"] == [{"norm": "ln", "gemm": "fc2"}]


def test_kept_only_where_it_times_faster(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    make, _ = _block(tmp_path)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    eng = make(link_codes=True, link_norm=False)
    assert eng.report["norm_residual"] == []
    calls: list[int] = []

    def only_codes(before: float, after: float) -> bool:  # the norm pair is timed, not kept
        calls.append(1)
        return len(calls) <= 2  # the two code links, then the norm link

    monkeypatch.setattr(link_codes, "link_pays", only_codes)
    eng = make(link_codes=True, link_norm=True)
    assert len(calls) == 3 and eng.report["norm_residual"] == []


def test_candidates_need_a_lone_residual_reader(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    make, _ = _block(tmp_path)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    g = make(link_codes=True).graph
    assert link_norm.candidates(g) == [link_norm.NormLink("ln", "fc2")]
    norm = next(n for n in g.nodes if n.op_type == "LayerNormCodes")
    g.outputs.append(g.values[norm.outputs[0]])  # Y wanted as an output: it must be written
    assert link_norm.candidates(g) == []


def test_norm_from_stats_is_layernorm() -> None:
    torch.manual_seed(0)
    r = torch.randn(3, 5, 16).half()
    w, b = torch.rand(16) + 0.5, torch.randn(16)
    rf = r.float()
    mean, inv = rf.mean(-1), torch.rsqrt(rf.var(-1, unbiased=False) + 1e-5)
    want = torch.nn.functional.layer_norm(rf, (16,), w, b, 1e-5).half()
    got = norm_from_stats(r, mean, inv, w, b)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_a_failure_while_trying_leaves_the_plan_as_it_was(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    make, rng = _block(tmp_path)
    monkeypatch.setattr(link_codes, "link_pays", lambda before, after: True)
    plain = make(link_codes=True, link_norm=False)

    def broken(graph):  # noqa: ANN001, ANN202
        raise RuntimeError("out of memory")

    monkeypatch.setattr(link_norm, "candidates", broken)
    eng = make(link_codes=True, link_norm=True)
    assert eng.report["norm_residual"] == []
    assert any("norm links not tried" in w and "out of memory" in w for w in eng.warnings)
    x = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    np.testing.assert_allclose(eng.run(x)["y"], plain.run(x)["y"], rtol=0, atol=0)
