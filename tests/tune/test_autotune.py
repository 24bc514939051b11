"""Tactic selection with fake tactics: the fastest right one wins, the others score inf."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ecoinfer.errors import ExecutionError
from ecoinfer.ir.graph import Node
from ecoinfer.tune import autotune
from ecoinfer.tune.autotune import (
    Choice,
    compare_outputs,
    instantiate,
    reference_runfn,
    select_tactic,
    time_fn,
)
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactic, tactics_for
from ecoinfer.tune.timing_cache import TimingCache

DOMAIN = "test.autotune"
OP = "FakeDouble"  # y = 2 * x
CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@tactic(OP, "fast", DOMAIN)
def _fast(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    def run(xs):  # noqa: ANN001, ANN202
        _count("fast")
        return [xs[0] * 2]

    return run


@tactic(OP, "slow", DOMAIN)
def _slow(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    def run(xs):  # noqa: ANN001, ANN202
        time.sleep(0.004)
        return [xs[0] + xs[0]]

    return run


@tactic(OP, "wrong", DOMAIN)
def _wrong(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    return lambda xs: [xs[0] * 2 + 1]


@tactic(OP, "raising", DOMAIN)
def _raising(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    def run(xs):  # noqa: ANN001, ANN202
        raise RuntimeError("kernel exploded")

    return run


@tactic(OP, "not_here", DOMAIN)
def _none(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    return None


@tactic(OP, "bad_make", DOMAIN)
def _bad_make(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    raise SyntaxError("compile error in generated kernel")


@tactic(OP, "nan", DOMAIN)
def _nan(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    return lambda xs: [torch.full_like(xs[0], float("nan"))]


@tactic(OP, "mutator", DOMAIN)
def _mutator(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    return lambda xs: [xs[0].mul_(2)]  # right answer, but destroys its input


@tactic(OP, "wrong_dtype", DOMAIN, dtypes=("float32",))
def _wrong_dtype(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    return lambda xs: [(xs[0] * 2).double()]


@tactic(OP, "gpu_only", DOMAIN, devices=("cuda",))
def _gpu_only(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    raise AssertionError("never made on the CPU")


def _configs(node: Node, attrs: dict, inputs: list, build: BuildInfo) -> list[dict[str, Any]]:
    assert isinstance(inputs[0], TensorInfo) and inputs[0].shape == (64, 32)
    return [{"k": 1}, {"k": 2}]


@tactic(OP, "tuned", DOMAIN, configs=_configs)
def _tuned(node: Node, attrs: dict, inputs: list, cfg: dict, build: BuildInfo):  # noqa: ANN202
    def run(xs):  # noqa: ANN001, ANN202
        time.sleep(0.002)
        return [xs[0] * 2 if cfg["k"] == 1 else xs[0] * 3]

    return run


def _reference(xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    time.sleep(0.001)
    x = xs[0]
    assert x is not None
    return [x * 2]


def _select(cache: TimingCache | None = None, log: Any = None) -> tuple[Choice, Any, torch.Tensor]:
    node = Node(OP, ["x"], ["y"], {}, "double0", DOMAIN)
    x = torch.randn(64, 32)
    build = BuildInfo(torch.device("cpu"), "float32")
    choice, run = select_tactic(node, {}, [x], build, _reference, cache, log, target_ms=3.0)
    return choice, run, x


def test_registry_filters_device_and_dtype() -> None:
    names = {t.name for t in tactics_for(OP, DOMAIN, "cpu", "float32")}
    assert "gpu_only" not in names and "wrong_dtype" in names
    assert "wrong_dtype" not in {t.name for t in tactics_for(OP, DOMAIN, "cpu", "bfloat16")}
    assert "gpu_only" in {t.name for t in tactics_for(OP, DOMAIN, "cuda:0", "tf32")}


def test_picks_fastest_right_tactic() -> None:
    lines: list[str] = []
    choice, run, x = _select(log=lines.append)
    assert choice.tactic == "fast" and choice.config == {}
    assert choice.node == "double0" and choice.op == f"{DOMAIN}::{OP}"
    assert 0 < choice.time_ms < math.inf
    torch.testing.assert_close(run([x])[0], x * 2)

    by = {c.name: c for c in choice.candidates}
    assert set(by) == {
        "reference",
        "fast",
        "slow",
        "wrong",
        "raising",
        "not_here",
        "bad_make",
        "nan",
        "mutator",
        "wrong_dtype",
        "tuned[k=1]",
        "tuned[k=2]",
    }
    for name in ("reference", "fast", "slow", "tuned[k=1]"):
        assert math.isfinite(by[name].time_ms), (name, by[name].reason)
        assert by[name].reason == "" and by[name].timing == "cpu"
    assert by["fast"].error == 0.0
    assert by["slow"].time_ms > by["fast"].time_ms
    assert by["slow"].time_ms > 3.0  # it sleeps 4 ms per call

    def bad(name: str, *words: str) -> None:
        c = by[name]
        assert c.time_ms == math.inf, name
        for w in words:
            assert w in c.reason, (name, c.reason)

    bad("wrong", "wrong result", "relative L2 error")
    bad("tuned[k=2]", "wrong result")
    bad("raising", "raised", "RuntimeError", "kernel exploded")
    bad("not_here", "not applicable")
    bad("bad_make", "make failed", "SyntaxError", "compile error")
    bad("nan", "NaN")
    bad("mutator", "modified its inputs")
    bad("wrong_dtype", "torch.float64", "expected torch.float32")
    assert by["wrong"].error is not None and by["wrong"].error > 1e-5

    # the runner-up is the second fastest right candidate
    ranked = sorted(
        (c for c in choice.candidates if math.isfinite(c.time_ms)), key=lambda c: c.time_ms
    )
    assert ranked[0].name == "fast"
    assert choice.runner_up == ranked[1].name and choice.runner_up_ms == ranked[1].time_ms

    # a plain callable (the builder's --verbose) gets every candidate: failures, the ones
    # not applicable, each time, and the choice
    text = "\n".join(lines)
    assert "raising" in text and "wrong result" in text and "bad_make" in text
    assert "not_here: not applicable" in text
    assert f"fast: {by['fast'].time_ms:.4f} ms (" in text
    assert "chose fast" in text


def test_inputs_restored_after_a_mutating_candidate() -> None:
    node = Node(OP, ["x"], ["y"], {}, "d", DOMAIN)
    x = torch.randn(64, 32)
    x0 = x.clone()
    build = BuildInfo(torch.device("cpu"), "float32")
    specs = [t for t in tactics_for(OP, DOMAIN, "cpu", "float32") if t.name == "mutator"]
    choice, _ = select_tactic(node, {}, [x], build, _reference, tactics=specs, target_ms=1.0)
    assert choice.tactic == "reference"  # the reference always exists
    assert choice.runner_up is None
    assert torch.equal(x, x0)


def test_cache_skips_timing_but_not_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "timing.json"
    cache = TimingCache.load(path)
    first, _, _ = _select(cache)
    assert cache.misses > 0 and cache.hits == 0
    timed = [c for c in first.candidates if math.isfinite(c.time_ms)]
    assert cache.entries() == len(timed) == 4
    cache.save()

    again = TimingCache.load(path)

    def no_timing(*a: Any, **k: Any) -> Any:
        raise AssertionError("timed although the cache has the time")

    monkeypatch.setattr(autotune, "measure", no_timing)
    CALLS.clear()
    second, run, x = _select(again)
    assert again.hits == 4 and again.misses == 0
    assert second.tactic == "fast" and second.time_ms == first.time_ms
    assert all(c.timing == "cache" for c in second.candidates if math.isfinite(c.time_ms))
    assert CALLS.get("fast") == 1  # the correctness check still ran
    # still judged: the wrong candidates are inf again
    assert {c.name for c in second.candidates if not math.isfinite(c.time_ms)} == {
        c.name for c in first.candidates if not math.isfinite(c.time_ms)
    }


def test_warm_cache_builds_only_the_candidates_that_could_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every time cached, only the fastest cached candidate is made (compiled) and
    checked; slower cached ones stay unbuilt (a fresh machine compiles the winners only).
    If the cached winner now fails its check, the next fastest is built instead."""
    path = tmp_path / "timing.json"
    cache = TimingCache.load(path)
    first, _, _ = _select(cache)
    cache.save()
    made: list[str] = []
    real_make = autotune._make

    def spy(cand, spec, *a):  # noqa: ANN001, ANN002, ANN202
        made.append(cand.name)
        return real_make(cand, spec, *a)

    monkeypatch.setattr(autotune, "_make", spy)
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("timed a cached one"))
    second, _, _ = _select(TimingCache.load(path))
    assert second.tactic == "fast" and "fast" in made
    assert "slow" not in made and "tuned[k=1]" not in made  # cached losers: never built
    assert "tuned[k=2]" in made and "wrong" in made  # never cached (wrong): judged again
    assert second.runner_up is not None and second.runner_up_ms == first.runner_up_ms

    def broken(cand, spec, *a):  # noqa: ANN001, ANN002, ANN202
        made.append(cand.name)
        if cand.tactic == "fast":  # the cached winner now computes a wrong result
            return lambda xs: [xs[0] * 5]
        return real_make(cand, spec, *a)

    made.clear()
    monkeypatch.setattr(autotune, "_make", broken)
    third, _, _ = _select(TimingCache.load(path))
    fast = next(c for c in third.candidates if c.tactic == "fast")
    assert not math.isfinite(fast.time_ms) and "wrong" in fast.reason
    ranked = sorted(
        (c for c in first.candidates if math.isfinite(c.time_ms) and c.tactic != "fast"),
        key=lambda c: c.time_ms,
    )
    assert third.tactic == ranked[0].tactic  # the next fastest on the cached times
    assert "slow" not in made or ranked[0].tactic == "slow"


def test_cache_from_another_device_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = TimingCache(tmp_path / "t.json")
    _select(cache)
    n = cache.entries()
    monkeypatch.setattr(
        autotune, "device_fingerprint", lambda dev: {"device_name": "another machine"}
    )
    cache.hits = cache.misses = 0
    _select(cache)
    assert cache.hits == 0 and cache.misses == n
    assert cache.entries() == 2 * n


def test_choice_serialises_to_strict_json() -> None:
    choice, _, _ = _select()
    d = choice.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = Choice.from_dict(json.loads(text))
    assert back.name == choice.name and back.time_ms == choice.time_ms
    assert [c.name for c in back.candidates] == [c.name for c in choice.candidates]
    assert all(
        (c.time_ms == math.inf) == (o.time_ms == math.inf)
        for c, o in zip(back.candidates, choice.candidates)
    )


def test_reference_failure_is_an_error() -> None:
    node = Node(OP, ["x"], ["y"], {}, "d", DOMAIN)

    def broken(xs):  # noqa: ANN001, ANN202
        raise RuntimeError("no")

    with pytest.raises(ExecutionError, match="reference kernel failed"):
        select_tactic(node, {}, [torch.ones(2)], BuildInfo(torch.device("cpu"), "float32"), broken)


def test_instantiate_rebuilds_the_chosen_tactic() -> None:
    node = Node(OP, ["x"], ["y"], {}, "d", DOMAIN)
    info = [TensorInfo((64, 32), torch.float32)]
    build = BuildInfo(torch.device("cpu"), "float32")
    run = instantiate(node, {}, info, build, "tuned", {"k": 1}, _reference)
    x = torch.randn(64, 32)
    torch.testing.assert_close(run([x])[0], x * 2)
    assert instantiate(node, {}, info, build, "reference", {}, _reference) is _reference
    with pytest.raises(ExecutionError, match="rebuild"):
        instantiate(node, {}, info, build, "no_such_tactic", {}, _reference)
    with pytest.raises(ExecutionError, match="rebuild"):
        instantiate(node, {}, info, build, "not_here", {}, _reference)


def test_real_op_on_cpu_picks_a_checked_tactic() -> None:
    """A FusedGemm node through the registry: torch tactics against the reference kernel."""
    node = Node("FusedGemm", ["a", "w", "b"], ["y"], {"trans_b": 1}, "fc", "ecoinfer")
    attrs = {"trans_b": 1, "activation": "Relu", "activation_params": []}
    w, b = torch.randn(24, 16), torch.randn(24)
    build = BuildInfo(torch.device("cpu"), "float32", {"w": w, "b": b})
    ref = reference_runfn(node, attrs, build.device)
    specs = [
        t
        for t in tactics_for("FusedGemm", "ecoinfer", "cpu", "float32")
        if t.make.__module__ == "ecoinfer.tune.torch_tactics"
    ]
    xs = [torch.randn(4, 8, 16), w, b]
    choice, run = select_tactic(node, attrs, xs, build, ref, target_ms=2, tactics=specs)
    names = {c.tactic for c in choice.candidates if math.isfinite(c.time_ms)}
    assert {"reference", "addmm", "linear"} <= names
    a = torch.randn(4, 8, 16)
    torch.testing.assert_close(run([a, w, b])[0], torch.relu(a @ w.t() + b))


# ---------------------------------------------------------------------- compare_outputs
def test_compare_outputs_rules() -> None:
    r = torch.tensor([1.0, 2.0, float("nan"), float("inf")])
    ok, err, _ = compare_outputs([r.clone()], [r], [True], 1e-5)
    assert ok and err == 0.0
    # NaN only where the reference has it; inf must match in place and sign
    bad = r.clone()
    bad[0] = float("nan")
    assert not compare_outputs([bad], [r], [True], 1e-5)[0]
    bad = r.clone()
    bad[3] = float("-inf")
    assert not compare_outputs([bad], [r], [True], 1e-5)[0]
    bad = r.clone()
    bad[2] = 0.0
    assert not compare_outputs([bad], [r], [True], 1e-5)[0]
    # relative error against the tolerance
    near = torch.tensor([1.0, 2.001, float("nan"), float("inf")])
    assert not compare_outputs([near], [r], [True], 1e-5)[0]
    assert compare_outputs([near], [r], [True], 1e-3)[0]
    # shape / dtype / count / type
    assert "shape" in compare_outputs([r[:2]], [r], [True], 1)[2]
    assert "dtype" not in compare_outputs([r.half()], [r], [True], 1)[2]  # message says "is"
    assert not compare_outputs([r.half()], [r], [True], 1)[0]
    assert not compare_outputs([], [r], [True], 1)[0]
    assert not compare_outputs(r, [r], [True], 1)[0]
    assert not compare_outputs(["x"], [r], [True], 1)[0]
    # an omitted output is not compared; exact types compare exactly
    assert compare_outputs([r, torch.zeros(1)], [r, torch.ones(1)], [True, False], 1e-5)[0]
    i = torch.tensor([1, 2, 3])
    assert compare_outputs([i.clone()], [i], [True], 1e-2)[0]
    assert not compare_outputs([i + 1], [i], [True], 1e-2)[0]
    # an all-zero reference: absolute error
    z = torch.zeros(3)
    assert compare_outputs([z + 1e-7], [z], [True], 1e-5)[0]
    assert not compare_outputs([z + 1], [z], [True], 1e-5)[0]


def test_time_fn_cpu() -> None:
    x = torch.randn(32, 32)
    t = time_fn(lambda xs: [xs[0] @ xs[0]], [x], "cpu", target_ms=2.0)
    assert 0 < t < 1000


# ---------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_time_fn_cuda_graph_and_eager() -> None:
    from ecoinfer.tune.autotune import measure  # noqa: PLC0415

    x = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    t, how = measure(lambda xs: [xs[0] @ xs[0]], [x], "cuda")
    assert how == "cuda_graph" and 0 < t < 100

    def not_capturable(xs):  # noqa: ANN001, ANN202
        y = xs[0] @ xs[0]
        float(y[0, 0])  # a host sync: cannot be captured
        return [y]

    t2, how2 = measure(not_capturable, [x], "cuda")
    assert how2 == "cuda_events" and t2 > 0
    # the failed capture must leave the CUDA RNG usable
    assert torch.randn(4, device="cuda").shape == (4,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_select_on_cuda() -> None:
    node = Node(OP, ["x"], ["y"], {}, "d", DOMAIN)
    x = torch.randn(256, 256, device="cuda")
    build = BuildInfo(torch.device("cuda"), "float32")
    specs = [t for t in tactics_for(OP, DOMAIN, "cpu", "float32") if t.name in ("fast", "wrong")]
    choice, _ = select_tactic(
        node, {}, [x], build, lambda xs: [xs[0] * 2], tactics=specs, target_ms=5
    )
    by = {c.name: c for c in choice.candidates}
    assert math.isfinite(by["fast"].time_ms) and by["wrong"].time_ms == math.inf


def test_workspace_limit_skips_candidates_over_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workspace: a candidate whose measured transient memory is over the limit is skipped
    with the figure in its reason; the reference (judge and fallback) never is. The CPU has no
    allocator count, so the measurement is stood in for here (the GPU test measures for real)."""
    need = {"fast": 64 << 20, "slow": 1 << 20, "reference": 512 << 20}

    current = [""]  # the candidate being measured (the spy below records it)

    def fake(run, inputs, dev):  # noqa: ANN001, ANN202
        return need[current[0]]

    real_fits = autotune._fits_workspace

    def spy(cand, run, inputs, dev, limit, is_reference):  # noqa: ANN001, ANN202
        current[0] = cand.tactic
        return real_fits(cand, run, inputs, dev, limit, is_reference)

    monkeypatch.setattr(autotune, "workspace_bytes", fake)
    monkeypatch.setattr(autotune, "_fits_workspace", spy)
    node = Node(OP, ["x"], ["y"], {}, "ws", DOMAIN)
    specs = [t for t in tactics_for(OP, DOMAIN, "cpu", "float32") if t.name in ("fast", "slow")]
    x = torch.randn(64, 32)
    build = BuildInfo(torch.device("cpu"), "float32", workspace_bytes=8 << 20)
    choice, _ = select_tactic(node, {}, [x], build, _reference, tactics=specs, target_ms=3.0)
    by = {c.name: c for c in choice.candidates}
    assert by["fast"].time_ms == math.inf
    assert "needs 64.0 MiB of workspace, over the 8 MiB limit" in by["fast"].reason
    assert by["fast"].workspace_bytes == 64 << 20
    assert math.isfinite(by["slow"].time_ms) and by["slow"].workspace_bytes == 1 << 20
    assert math.isfinite(by["reference"].time_ms)  # over the limit too, but kept
    assert choice.tactic in ("slow", "reference")
    assert by["fast"].to_dict()["workspace_bytes"] == 64 << 20
    # no limit: nothing is measured, nothing is skipped for its workspace
    build = BuildInfo(torch.device("cpu"), "float32")
    choice, _ = select_tactic(node, {}, [x], build, _reference, tactics=specs, target_ms=3.0)
    assert choice.tactic == "fast"
    assert all(c.workspace_bytes is None for c in choice.candidates)


def test_workspace_is_not_measured_on_the_cpu() -> None:
    x = torch.randn(8)
    assert autotune.workspace_bytes(lambda xs: [xs[0] * 2], [x], torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_workspace_measured_on_the_gpu() -> None:
    """A call that allocates 32 MiB of scratch and frees it measures as at least 32 MiB; one
    that allocates only its output measures as (about) nothing."""
    dev = torch.device("cuda")
    x = torch.randn(1024, device=dev)

    def scratchy(xs):  # noqa: ANN001, ANN202
        tmp = torch.empty(32 << 20, dtype=torch.uint8, device=dev)
        tmp.zero_()
        return [xs[0] * 2]

    ws = autotune.workspace_bytes(scratchy, [x], dev)
    assert ws is not None and ws >= 32 << 20
    lean = autotune.workspace_bytes(lambda xs: [xs[0] * 2], [x], dev)
    assert lean is not None and lean < 1 << 20


# ---------------------------------------------------------------------- rotated inputs
def test_input_sets_copy_until_the_bytes_are_reached() -> None:
    """Copies keep values, shapes, strides and storage offsets on new storages; tensors that
    share a storage share its copy; None and tensors on another device stay as they are."""
    base = torch.randn(8, 16)  # 512 bytes
    view = base[:, 4:12]  # a strided view of the same storage, offset 4
    other = torch.arange(32, dtype=torch.int64)  # 256 bytes
    xs = [view, None, other, base]
    sets = autotune.input_sets(xs, 4 * 768, "cpu")
    assert len(sets) == 4 and sets[0] is xs
    for s in sets[1:]:
        v, none, o, b = s
        assert none is None
        assert torch.equal(v, view) and v.stride() == view.stride()
        assert v.storage_offset() == view.storage_offset() == 4
        assert v.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
        assert v.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # shared copy
        assert torch.equal(o, other) and o.data_ptr() != other.data_ptr()
    ptrs = {s[2].data_ptr() for s in sets}
    assert len(ptrs) == 4  # every set its own memory
    assert autotune.input_sets(xs, 0, "cpu") == [xs]  # no rotation asked
    assert autotune.input_sets(xs, 768, "cpu") == [xs]  # one set already holds that much
    assert autotune.input_sets(xs, 10**9, "cpu")[-1][0] is not view
    assert len(autotune.input_sets(xs, 10**9, "cpu")) == autotune.MAX_INPUT_SETS
    assert autotune.input_sets(xs, 10**9) == [xs]  # CUDA tensors only by default


def test_rotated_timings_are_cached_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that rotates its inputs neither reads nor overwrites times taken on one set."""
    monkeypatch.setattr(autotune, "cold_rotate_bytes", lambda dev: 1 << 20)
    cache = TimingCache(tmp_path / "t.json")
    _select(cache)
    n = cache.entries()
    node = Node(OP, ["x"], ["y"], {}, "double0", DOMAIN)
    build = BuildInfo(torch.device("cpu"), "float32", cold_inputs=True)
    cache.hits = cache.misses = 0
    select_tactic(node, {}, [torch.randn(64, 32)], build, _reference, cache, target_ms=3.0)
    assert cache.hits == 0 and cache.misses == n and cache.entries() == 2 * n
    records = [fp for fp, _ in cache._devices.values()]
    assert sum(fp.get("tuning_inputs") == "rotated" for fp in records) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rotated_timing_on_cuda() -> None:
    """Rotated inputs on the GPU: the copies are made and timed, and reading a matrix from
    memory takes no less than reading it from the L2."""
    x = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)  # 8 MiB: fits the L2
    rot = autotune.cold_rotate_bytes("cuda")
    assert rot > 0
    t_hot = autotune.measure(lambda xs: [xs[0] * 2], [x], "cuda")[0]
    sets = autotune.input_sets([x], rot)
    t_cold, how = autotune.measure(lambda xs: [xs[0] * 2], [x], "cuda", sets=sets)
    assert len(sets) > 1
    assert how == "cuda_graph" and t_cold >= 0.9 * t_hot


def test_sustained_timing_reorders_only_the_finalists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidates within SUSTAINED_MARGIN of the fastest burst time (at most
    SUSTAINED_FINALISTS) are timed under sustained load, and their sustained times decide."""
    from ecoinfer.tune import autotune
    from ecoinfer.tune.autotune import Candidate
    from ecoinfer.tune.tactics import BuildInfo

    burst = {"a": 0.100, "b": 0.104, "c": 0.107, "d": 0.109, "e": 0.120}
    under_load = {"a": 0.130, "b": 0.121, "c": 0.125, "d": 0.110}
    cands = [Candidate(n, {}, t) for n, t in burst.items()]
    runs = {k: (lambda xs, _n=c.tactic: _n) for k, c in enumerate(cands)}
    timed: list[str] = []

    def fake(run, sets, dev, seconds):  # noqa: ANN001, ANN202
        timed.append(run(None))
        return under_load[run(None)]

    monkeypatch.setattr(autotune, "time_sustained", fake)
    build = BuildInfo(torch.device("cuda"), "float16", sustained_s=1.0)
    autotune._refine_sustained(cands, runs, build, [[None]], None, {}, "sig", "", "layer", None)
    # a, b and c are within 8% of a's 0.100 ms; d (9%) and e are not
    assert timed == ["a", "b", "c"]
    assert [c.sustained_ms for c in cands] == [0.130, 0.121, 0.125, None, None]
    # too short a kernel: no sustained timing at all
    short = [Candidate("x", {}, 0.010), Candidate("y", {}, 0.0101)]
    timed.clear()
    autotune._refine_sustained(
        short, {0: runs[0], 1: runs[1]}, build, [[None]], None, {}, "sig", "", "layer", None
    )
    assert timed == [] and all(c.sustained_ms is None for c in short)
