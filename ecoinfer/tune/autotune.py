"""Tactic selection: time every implementation of a node on the device, keep the fastest right one.

For one node at the profile's opt shapes (real input tensors on the device):

1. the reference tactic (the torch kernel) runs once; its outputs judge everyone else;
2. every registered tactic x config (ecoinfer.tune.tactics.tactics_for) is made; make() -> None
   means "not applicable";
3. each candidate runs once and every output is compared with the reference's (same shape and
   dtype, NaN/inf only where the reference has them, relative L2 error <= TOLERANCE[precision]);
   a candidate that fails to build, raises, modifies its inputs or disagrees scores infinity and
   is logged; nothing a candidate does fails the build (Inductor's select_algorithm, tinygrad's
   BEAM);
4. the right ones are timed (time_fn: CUDA graph replays timed with events on the GPU, median of
   repeats; perf_counter on the CPU), unless the timing cache already has their time.

The reference always passes, so there is always a choice.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoinfer.device import recover_failed_capture
from ecoinfer.engine.fingerprint import TOLERANCE, fingerprint
from ecoinfer.errors import ExecutionError
from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.fused_quant import writes_codes
from ecoinfer.tune.tactics import BuildInfo, RunFn, TacticSpec, TensorInfo, tactics_for
from ecoinfer.tune.timing_cache import TimingCache, op_signature

Tensor = torch.Tensor
Log = logging.Logger | Callable[[str], None] | None

_LOG = logging.getLogger("ecoinfer.tune")
REFERENCE = "reference"
TARGET_MS = 25.0  # timing budget per candidate (the issue asks ~20-50 ms)
# sustained timing (BuildInfo.sustained_s): the candidates within this fraction of the
# fastest burst time, at most SUSTAINED_FINALISTS of them, in layers whose fastest candidate
# takes at least SUSTAINED_MIN_MS (shorter kernels are cheap wherever they run)
SUSTAINED_MARGIN = 0.08
SUSTAINED_FINALISTS = 4
SUSTAINED_MIN_MS = 0.015
INF = math.inf


# ---------------------------------------------------------------------- results
@dataclass
class Candidate:
    """One implementation tried for a node."""

    tactic: str
    config: dict[str, Any] = field(default_factory=dict)
    time_ms: float = INF  # inf: not usable (see reason)
    reason: str = ""  # why inf: "not applicable", "make failed: ...", "wrong result: ..."
    error: float | None = None  # relative L2 error against the reference (worst output)
    timing: str = ""  # how time_ms was obtained: "cuda_graph", "cuda_events", "cpu", "cache"
    # transient GPU memory one call allocates beyond its outputs (None: not measured, CPU)
    workspace_bytes: int | None = None
    # ms per call under sustained load (BuildInfo.sustained_s; None: not measured so)
    sustained_ms: float | None = None

    @property
    def name(self) -> str:
        return candidate_name(self.tactic, self.config)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "tactic": self.tactic,
            "config": self.config,
            "time_ms": self.time_ms if math.isfinite(self.time_ms) else None,
            "reason": self.reason,
            "error": self.error,
            "timing": self.timing,
        }
        if self.workspace_bytes is not None:
            d["workspace_bytes"] = self.workspace_bytes
        if self.sustained_ms is not None:
            d["sustained_ms"] = self.sustained_ms
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        t = d.get("time_ms")
        return cls(
            d["tactic"],
            dict(d.get("config") or {}),
            INF if t is None else float(t),
            d.get("reason", ""),
            d.get("error"),
            d.get("timing", ""),
            d.get("workspace_bytes"),
            d.get("sustained_ms"),
        )


@dataclass
class Choice:
    """The tactic chosen for one node, with the runner-up and every candidate tried."""

    node: str
    op: str
    precision: str
    tactic: str
    config: dict[str, Any]
    time_ms: float
    runner_up: str | None = None  # candidate name (tactic[k=v,...])
    runner_up_ms: float | None = None
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def name(self) -> str:
        return candidate_name(self.tactic, self.config)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (no inf): for the engine header and the build report."""
        return {
            "node": self.node,
            "op": self.op,
            "precision": self.precision,
            "tactic": self.tactic,
            "config": self.config,
            "time_ms": self.time_ms if math.isfinite(self.time_ms) else None,
            "runner_up": self.runner_up,
            "runner_up_ms": self.runner_up_ms,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        t = d.get("time_ms")
        return cls(
            d["node"],
            d["op"],
            d.get("precision", ""),
            d["tactic"],
            dict(d.get("config") or {}),
            INF if t is None else float(t),
            d.get("runner_up"),
            d.get("runner_up_ms"),
            [Candidate.from_dict(c) for c in d.get("candidates", [])],
        )


def candidate_name(tactic: str, config: dict[str, Any] | None) -> str:
    if not config:
        return tactic
    return f"{tactic}[{','.join(f'{k}={v}' for k, v in config.items())}]"


# ---------------------------------------------------------------------- helpers
def reference_runfn(node: Node, attrs: dict[str, Any], device: torch.device, opset: int = 21):  # noqa: ANN201
    """The torch reference kernel of `node` as a RunFn (for ops without control flow)."""
    from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: PLC0415

    fn = get_kernel(node.op_type, node.domain)
    if fn is None:
        raise ExecutionError(f"{node.label()}: no torch reference kernel for this op")

    def no_subgraph(*_: Any) -> list[Tensor]:
        raise ExecutionError(f"{node.label()}: control flow is not supported by the tuner")

    ctx = KernelContext(node, attrs, torch.device(device), no_subgraph, opset)

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        return fn(ctx, xs)

    return run


def find_tactic(op_type: str, domain: str, name: str, device: str, precision: str) -> TacticSpec:
    """The registered tactic `name` of this op (to rebuild a chosen tactic when an engine loads)."""
    for t in tactics_for(op_type, domain, device, precision):
        if t.name == name:
            return t
    raise ExecutionError(
        f"tactic '{name}' of {domain + '::' if domain else ''}{op_type} is not available here "
        f"(device {device}, precision {precision}); rebuild the engine on this machine"
    )


def instantiate(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    build: BuildInfo,
    tactic: str,
    config: dict[str, Any],
    reference: RunFn,
) -> RunFn:
    """The RunFn of an already chosen tactic (no timing): what loading an engine does."""
    if tactic == REFERENCE:
        return reference
    spec = find_tactic(node.op_type, node.domain, tactic, build.device.type, build.precision)
    fn = spec.make(node, attrs, inputs, dict(config), build)
    if fn is None:
        raise ExecutionError(
            f"{node.label()}: tactic '{candidate_name(tactic, config)}' chosen at build time "
            "does not apply here; rebuild the engine"
        )
    return fn


@functools.lru_cache(maxsize=16)
def _fingerprint(device: str) -> dict[str, str | None]:
    return fingerprint(device)


def device_fingerprint(device: str | torch.device) -> dict[str, str | None]:
    """fingerprint(device), computed once per device (NVML is slow to open)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dict(_fingerprint(str(dev)))


def _emit(log: Log, level: int, msg: str) -> None:
    if log is None:
        _LOG.log(level, msg)
    elif isinstance(log, logging.Logger):
        log.log(level, msg)
    else:  # a function (the builder's --verbose): every candidate's time and the choice
        log(msg)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bits(t: Tensor) -> Tensor:
    """The raw bytes of a tensor (bitwise equality: NaN == NaN, -0.0 != 0.0)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


# ---------------------------------------------------------------------- correctness
def compare_outputs(
    outs: Any, refs: list[Tensor], wanted: list[bool], tol: float, codes: bool = False
) -> tuple[bool, float | None, str]:
    """(ok, worst relative L2 error, reason) of a candidate's outputs against the reference's.

    Only the node's wanted outputs are compared. NaN never passes where the reference is not
    NaN, and +-inf must sit where the reference has it; the rest is compared by relative L2.
    Integer outputs must be equal, except with `codes` (a quantized layer writing int8 codes
    for the next one): those are values too, and a code off by one where the float result sat
    on a rounding boundary is an error like any other."""
    if not isinstance(outs, list | tuple):
        return False, None, f"returned {type(outs).__name__}, not a list of tensors"
    worst = 0.0
    for i, want in enumerate(wanted):
        if not want:
            continue
        if i >= len(outs) or i >= len(refs):
            return False, None, f"returned {len(outs)} outputs, the node has {len(wanted)}"
        o, r = outs[i], refs[i]
        if not isinstance(o, torch.Tensor):
            return False, None, f"output {i} is {type(o).__name__}, not a tensor"
        if tuple(o.shape) != tuple(r.shape):
            return False, None, f"output {i} has shape {list(o.shape)}, expected {list(r.shape)}"
        if o.dtype != r.dtype:
            return False, None, f"output {i} is {o.dtype}, expected {r.dtype}"
        if o.device != r.device:
            return False, None, f"output {i} is on {o.device}, expected {r.device}"
        if not r.is_floating_point() and not (codes and r.dtype == torch.int8):
            if not torch.equal(o, r):
                return False, None, f"output {i} differs from the reference (exact type)"
            continue
        cdt = torch.float64 if r.dtype == torch.float64 else torch.float32
        of, rf = o.to(cdt), r.to(cdt)
        o_nan, r_nan = torch.isnan(of), torch.isnan(rf)
        if bool((o_nan & ~r_nan).any()):
            return False, None, f"output {i} has NaN where the reference has none"
        if not torch.equal(o_nan, r_nan):
            return False, None, f"output {i} lacks NaNs the reference has"
        r_inf, o_inf = torch.isinf(rf), torch.isinf(of)
        if not torch.equal(r_inf, o_inf) or not torch.equal(of[r_inf], rf[r_inf]):
            return False, None, f"output {i} has +-inf where the reference differs"
        fin = torch.isfinite(rf)
        d = torch.linalg.vector_norm(of[fin] - rf[fin]).item()
        n = torch.linalg.vector_norm(rf[fin]).item()
        err = d / n if n > 0 else d
        if not math.isfinite(err):
            return False, err, f"output {i}: error is not finite ({err})"
        worst = max(worst, err)
        if err > tol:
            return False, err, f"wrong result: output {i} relative L2 error {err:.3g} > {tol:g}"
    return True, worst, ""


# ---------------------------------------------------------------------- timing
def time_fn(
    fn: RunFn,
    xs: list[Tensor | None],
    device: str | torch.device,
    target_ms: float = TARGET_MS,
    cuda_graph: bool = True,
) -> float:
    """Median time of one fn(xs) call in milliseconds (warm-up excluded)."""
    return measure(fn, xs, device, target_ms, cuda_graph)[0]


def measure(
    fn: RunFn,
    xs: list[Tensor | None],
    device: str | torch.device,
    target_ms: float = TARGET_MS,
    cuda_graph: bool = True,
    sets: list[list[Tensor | None]] | None = None,
) -> tuple[float, str]:
    """(median ms per call, method). On CUDA the calls are captured in a CUDA graph and its
    replays timed with events, which is GPU time as the runtime (which replays graphs) sees it;
    a function that cannot be captured is timed eagerly with events. sets (CUDA): successive
    calls cycle through these input sets (input_sets: xs and copies of it), so each call reads
    its inputs from memory rather than from the cache the last one filled."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return _time_cpu(fn, xs, target_ms), "cpu"
    return _time_cuda(fn, sets or [xs], dev, target_ms, cuda_graph)


MAX_INPUT_SETS = 8


def cold_rotate_bytes(device: str | torch.device) -> int:
    """Input bytes a tuning run cycles through so that no call finds its inputs in the L2:
    twice the GPU's L2 size (0 where unknown: no rotation)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(dev)
    return 2 * int(getattr(props, "L2_cache_size", 0) or 0)


def input_sets(
    xs: list[Tensor | None], rotate_bytes: int, device_type: str = "cuda"
) -> list[list[Tensor | None]]:
    """xs, then as many copies of its device tensors (same strides and storage offsets, so the
    same kernels and alignment apply) as it takes to hold rotate_bytes in all, at most
    MAX_INPUT_SETS sets. In an engine a layer's inputs come from the layers before it and its
    weights have not been read since the last call, so they are mostly not in the L2; timing
    one set over and over would keep them there and favour what the cache hides."""
    dev_storages = {
        x.untyped_storage().data_ptr(): x.untyped_storage().nbytes()
        for x in xs
        if x is not None and x.device.type == device_type
    }
    size = sum(dev_storages.values())
    if rotate_bytes <= 0 or size <= 0 or size >= rotate_bytes:
        return [xs]
    k = min(MAX_INPUT_SETS, math.ceil(rotate_bytes / size))
    return [xs] + [_copies(xs, device_type) for _ in range(k - 1)]


def _copies(xs: list[Tensor | None], device_type: str) -> list[Tensor | None]:
    made: dict[int, Tensor] = {}  # one new storage per storage (tensors sharing one share it)
    out: list[Tensor | None] = []
    for x in xs:
        if x is None or x.device.type != device_type:
            out.append(x)
            continue
        st = x.untyped_storage()
        if st.data_ptr() not in made:
            made[st.data_ptr()] = (
                torch.empty(0, dtype=torch.uint8, device=x.device).set_(st).clone()
            )
        twin = made[st.data_ptr()].untyped_storage()
        out.append(
            torch.empty(0, dtype=x.dtype, device=x.device).set_(
                twin, x.storage_offset(), x.size(), x.stride()
            )
        )
    return out


def _time_cpu(fn: RunFn, xs: list[Tensor | None], target_ms: float) -> float:
    fn(xs)  # warm-up (first-call allocations, lazy init)
    t0 = time.perf_counter()
    fn(xs)
    est = (time.perf_counter() - t0) * 1e3
    reps = int(min(1000, max(3, target_ms / max(est, 1e-3))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(xs)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _time_cuda(
    fn: RunFn,
    sets: list[list[Tensor | None]],
    dev: torch.device,
    target_ms: float,
    cuda_graph: bool,
) -> tuple[float, str]:
    k = len(sets)
    with torch.cuda.device(dev):
        stream, est = _warm_up(fn, sets, dev)
        inner = int(min(100, max(1, math.ceil(0.5 / max(est, 1e-4)))))
        inner = k * math.ceil(inner / k)  # every set as often
        if cuda_graph:
            try:
                return _time_graph(fn, sets, dev, stream, inner, target_ms), "cuda_graph"
            except Exception as e:  # noqa: BLE001  (not capturable: time it eagerly)
                _LOG.debug("CUDA graph capture failed, timing eagerly: %s", _short(e))
                recover_failed_capture(dev)
        reps = int(min(200, max(5, target_ms / max(est * inner, 1e-3))))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            s.record()
            for i in range(inner):
                fn(sets[i % k])
            e.record()
        torch.cuda.synchronize(dev)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / inner, (
            "cuda_events"
        )


def _warm_up(
    fn: RunFn, sets: list[list[Tensor | None]], dev: torch.device
) -> tuple[torch.cuda.Stream, float]:
    """A side stream to capture on, after warm-up calls on it (cuBLAS workspaces, autotuners,
    lazy modules), and the ms per call that a few eager calls take."""
    k = len(sets)
    stream = torch.cuda.Stream(dev)
    cur = torch.cuda.current_stream(dev)
    stream.wait_stream(cur)
    with torch.cuda.stream(stream):
        for i in range(max(3, k)):
            fn(sets[i % k])
    cur.wait_stream(stream)
    torch.cuda.synchronize(dev)
    return stream, _events(fn, sets, max(3, k)) / max(3, k)


def _events(fn: RunFn, sets: list[list[Tensor | None]], n: int) -> float:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for i in range(n):
        fn(sets[i % len(sets)])
    e.record()
    e.synchronize()
    return s.elapsed_time(e)


def _time_graph(
    fn: RunFn,
    sets: list[list[Tensor | None]],
    dev: torch.device,
    stream: torch.cuda.Stream,
    inner: int,
    target_ms: float,
) -> float:
    g = torch.cuda.CUDAGraph()
    try:
        # `inner` calls per graph amortise the replay launch for microsecond kernels
        _capture(g, fn, sets, stream, inner)
        g.replay()
        torch.cuda.synchronize(dev)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        per = max(s.elapsed_time(e), 1e-4)
        reps = int(min(200, max(5, target_ms / per)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            s.record()
            g.replay()
            e.record()
        torch.cuda.synchronize(dev)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / inner
    finally:
        del g  # frees the graph's private memory pool


def time_sustained(
    fn: RunFn, sets: list[list[Tensor | None]], dev: torch.device, seconds: float
) -> float:
    """ms per call over `seconds` of back-to-back CUDA-graph replays (calls cycling through
    the input sets), after a third as long of the same: the GPU then runs at the clock its
    power limit allows under this kernel, as it does when an engine of such kernels is
    replayed at full load, not at the boost clock of a short burst."""
    k = len(sets)
    with torch.cuda.device(dev):
        stream, est = _warm_up(fn, sets, dev)
        inner = k * math.ceil(min(200, max(1, math.ceil(2.0 / max(est, 1e-4)))) / k)
        g = torch.cuda.CUDAGraph()
        try:
            _capture(g, fn, sets, stream, inner)
            _replay_for(g, seconds / 3, inner)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            n = _replay_for(g, seconds, inner)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / n
        finally:
            del g


def _capture(
    g: torch.cuda.CUDAGraph,
    fn: RunFn,
    sets: list[list[Tensor | None]],
    stream: torch.cuda.Stream,
    inner: int,
) -> None:
    """Capture `inner` calls of fn into g, cycling through the input sets."""
    with torch.cuda.graph(g, stream=stream):
        for i in range(inner):
            fn(sets[i % len(sets)])


def _replay_for(g: torch.cuda.CUDAGraph, seconds: float, inner: int) -> int:
    """Replay g back to back for about `seconds`; the number of calls it holds, replayed."""
    rounds: list[torch.cuda.Event] = []
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(4):
            g.replay()
        ev = torch.cuda.Event()
        ev.record()
        rounds.append(ev)
        if len(rounds) > 2:  # two rounds queued: the GPU never waits for the host
            rounds.pop(0).synchronize()
        n += 4 * inner
    return n


def _refine_sustained(
    cands: list[Candidate],
    runs: dict[int, RunFn],
    build: BuildInfo,
    sets: list[list[Tensor | None]],
    cache: TimingCache | None,
    fp: dict,
    sig: str,
    sig_text: str,
    label: str,
    log: Log,
) -> None:
    """Time the finalists (the fastest candidates by burst time) under sustained load; sets
    their sustained_ms. Called only on CUDA with build.sustained_s > 0."""
    dev = torch.device(build.device)
    ok = sorted(
        (k for k in runs if math.isfinite(cands[k].time_ms)), key=lambda k: _rank(build, cands[k])
    )
    if len(ok) < 2 or cands[ok[0]].time_ms < SUSTAINED_MIN_MS:
        return
    best = _rank(build, cands[ok[0]])
    finalists = [
        k
        for k in ok
        if _rank(build, cands[k])[:-1] == best[:-1]
        and cands[k].time_ms <= cands[ok[0]].time_ms * (1 + SUSTAINED_MARGIN)
    ][:SUSTAINED_FINALISTS]
    if len(finalists) < 2:
        return
    fp_s = {**fp, "timing": f"sustained {build.sustained_s:g} s"}
    for k in finalists:
        c = cands[k]
        t = cache.get(fp_s, sig, c.tactic, c.config) if cache is not None else None
        if t is None:
            try:
                t = time_sustained(runs[k], sets, dev, build.sustained_s)
            except Exception as e:  # noqa: BLE001  (keeps its burst time only)
                _recover(dev)
                _emit(log, logging.INFO, f"{label}: {c.name}: sustained timing failed: {_short(e)}")
                continue
            if cache is not None:
                cache.put(fp_s, sig, c.tactic, c.config, t, sig_text)
        c.sustained_ms = t
        _emit(
            log, logging.DEBUG, f"{label}: {c.name}: {t:.4f} ms sustained ({c.time_ms:.4f} burst)"
        )


# ---------------------------------------------------------------------- selection
def select_tactic(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[Tensor | None],
    build: BuildInfo,
    reference: RunFn,
    cache: TimingCache | None = None,
    log: Log = None,
    target_ms: float = TARGET_MS,
    tactics: list[TacticSpec] | None = None,
) -> tuple[Choice, RunFn]:
    """The fastest tactic for `node` whose outputs match the reference's, and its RunFn.

    `inputs` are real tensors at the opt shapes on build.device (None for omitted inputs);
    inputs named in build.weights are weights. `tactics` overrides the registry (tests)."""
    with torch.no_grad():
        return _select(node, attrs, inputs, build, reference, cache, log, target_ms, tactics)


def _rank(build: BuildInfo, c: Candidate) -> tuple:
    """Sort key of a timed candidate: a lean build's Triton tactics first, then time."""
    return (build.prefer_triton and not c.tactic.startswith("triton_"), c.time_ms)


def _select(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[Tensor | None],
    build: BuildInfo,
    reference: RunFn,
    cache: TimingCache | None,
    log: Log,
    target_ms: float,
    tactics: list[TacticSpec] | None,
) -> tuple[Choice, RunFn]:
    dev = torch.device(build.device)
    label = node.name or node.op_type
    op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    tol = TOLERANCE[build.precision]
    infos: list[TensorInfo | None] = []
    for i, x in enumerate(inputs):
        name = node.inputs[i] if i < len(node.inputs) else ""
        infos.append(
            None if x is None else TensorInfo(tuple(x.shape), x.dtype, name in build.weights)
        )
    wanted = [bool(o) for o in node.outputs]
    # a quantized layer writing the next one's codes (y_scale): its int8 output is compared
    # as values, not bit for bit (the kernels round from float32, the reference from Y's dtype)
    codes = writes_codes(node)
    sig, sig_text = op_signature(
        node.op_type, node.domain, attrs, infos, build.precision, list(node.outputs)
    )
    rotate = cold_rotate_bytes(dev) if build.cold_inputs else 0
    sets: list[list[Tensor | None]] | None = None  # made once, when a first candidate is timed
    fp = device_fingerprint(dev) if cache is not None else {}
    if rotate and cache is not None:  # times from rotated inputs are not those from one set
        fp["tuning_inputs"] = "rotated"

    # 1. the judge
    try:
        refs = list(reference(inputs))
        _sync(dev)
    except Exception as e:
        raise ExecutionError(
            f"{node.label()}: the reference kernel failed at the opt shapes "
            f"{[None if x is None else list(x.shape) for x in inputs]}: {_short(e)}"
        ) from e
    snapshot = [None if x is None else _bits(x).clone() for x in inputs]

    # 2. the candidates
    specs = (
        tactics
        if tactics is not None
        else tactics_for(node.op_type, node.domain, dev.type, build.precision)
    )
    todo: list[tuple[str, dict[str, Any], TacticSpec | None]] = [(REFERENCE, {}, None)]
    cands: list[Candidate] = []
    for spec in specs:
        if spec.name == REFERENCE or spec.name in build.exclude:
            continue
        try:
            cfgs = spec.configs(node, attrs, infos, build) if spec.configs else [{}]
        except Exception as e:  # noqa: BLE001
            cands.append(Candidate(spec.name, {}, INF, f"configs failed: {_short(e)}"))
            _emit(log, logging.INFO, f"{label}: {spec.name}: configs failed: {_short(e)}")
            continue
        todo += [(spec.name, dict(c), spec) for c in cfgs]

    best: tuple[Any, int, RunFn] | None = None
    runs: dict[int, RunFn] = {}  # candidate index -> run, for the sustained timing

    def built(cand: Candidate, spec: TacticSpec | None) -> RunFn | None:
        """The candidate's RunFn once made and checked against the reference (None: unusable,
        cand.reason says why). The reference itself needs neither."""
        run = reference if spec is None else _make(cand, spec, node, attrs, infos, build)
        if run is None:
            # a build failure is worth a line in a verbose build; "not applicable" is routine
            level = logging.INFO if cand.reason else logging.DEBUG
            cand.reason = cand.reason or "not applicable"
            _emit(log, level, f"{label}: {cand.name}: {cand.reason}")
            return None
        if spec is not None:
            if not _check(cand, run, inputs, refs, wanted, tol, dev, codes):
                _emit(log, logging.INFO, f"{label}: {cand.name}: {cand.reason}")
                _restore(inputs, snapshot)
                return None
            if not _unchanged(inputs, snapshot):
                cand.reason = "modified its inputs"
                _restore(inputs, snapshot)
                _emit(log, logging.INFO, f"{label}: {cand.name}: {cand.reason}")
                return None
        else:
            cand.error = 0.0
        if not _fits_workspace(cand, run, inputs, dev, build.workspace_bytes, spec is None):
            _restore(inputs, snapshot)
            _emit(log, logging.INFO, f"{label}: {cand.name}: {cand.reason}")
            return None
        return run

    def consider(k: int, run: RunFn) -> None:
        nonlocal best
        cand = cands[k]
        _emit(log, logging.DEBUG, f"{label}: {cand.name}: {cand.time_ms:.4f} ms ({cand.timing})")
        if build.sustained_s > 0:
            runs[k] = run
        key = _rank(build, cand)
        if best is None or key < best[0]:
            best = (key, k, run)

    # Cache first: a candidate whose time the cache holds is made (compiled) and checked only
    # if it could still win, fastest first, so a rebuild on a fresh machine compiles the
    # winners and not every candidate. Sustained tuning needs every finalist's kernel: it
    # makes them all, as an uncached build does.
    lazy = cache is not None and build.sustained_s <= 0
    cached: list[tuple[int, TacticSpec | None]] = []
    for name, cfg, spec in todo:
        cand = Candidate(name, cfg)
        cands.append(cand)
        t = cache.get(fp, sig, name, cfg, count_miss=False) if cache is not None else None
        if t is not None and lazy:
            cand.time_ms, cand.timing = t, "cache"
            cached.append((len(cands) - 1, spec))
            continue
        run = built(cand, spec)
        if run is None:
            continue
        if t is not None:
            cand.time_ms, cand.timing = t, "cache"
        else:
            if cache is not None:
                cache.misses += 1  # a candidate that runs and has to be timed
            try:
                if sets is None:
                    sets = input_sets(inputs, rotate)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cand.time_ms, cand.timing = measure(run, inputs, dev, target_ms, sets=sets)
            except Exception as e:  # noqa: BLE001
                cand.reason = f"timing failed: {_short(e)}"
                _recover(dev)
                _restore(inputs, snapshot)
                _emit(log, logging.INFO, f"{label}: {cand.name}: {cand.reason}")
                continue
            if cache is not None:
                cache.put(fp, sig, name, cfg, cand.time_ms, sig_text)
        consider(len(cands) - 1, run)
    for k, spec in sorted(cached, key=lambda ks: _rank(build, cands[ks[0]])):
        cand = cands[k]
        if best is not None and not _rank(build, cand) < best[0]:
            break  # it and every later one lose on their cached times: left unbuilt
        run = built(cand, spec)
        if run is None:
            cand.time_ms = INF  # its cached time no longer counts
            continue
        consider(k, run)

    if best is None:  # only if the reference itself failed to time
        raise ExecutionError(
            f"{node.label()}: no tactic could run, not even the reference: "
            + "; ".join(f"{c.name}: {c.reason}" for c in cands)
        )
    if build.sustained_s > 0 and dev.type == "cuda" and len(runs) > 1:
        if sets is None:  # every time came from the cache
            sets = input_sets(inputs, rotate)
        _refine_sustained(cands, runs, build, sets, cache, fp, sig, sig_text, label, log)
        timed = [k for k in runs if cands[k].sustained_ms is not None]
        if timed:
            k = min(timed, key=lambda k: (_rank(build, cands[k])[:-1], cands[k].sustained_ms))
            best = (_rank(build, cands[k]), k, runs[k])
        runs.clear()
    win = cands[best[1]]

    def when(c: Candidate) -> float:  # sustained times, where measured, rank the finalists
        return (
            c.sustained_ms
            if c.sustained_ms is not None and win.sustained_ms is not None
            else c.time_ms
        )

    ranked = sorted((c for c in cands if math.isfinite(c.time_ms) and c is not win), key=when)
    up = ranked[0] if ranked else None
    choice = Choice(
        label,
        op,
        build.precision,
        win.tactic,
        win.config,
        win.time_ms,
        up.name if up else None,
        up.time_ms if up else None,
        cands,
    )
    _emit(
        log,
        logging.DEBUG,
        f"{label}: chose {win.name} {win.time_ms:.4f} ms"
        + (f" (runner-up {up.name} {up.time_ms:.4f} ms)" if up else ""),
    )
    return choice, best[2]


def _make(
    cand: Candidate,
    spec: TacticSpec,
    node: Node,
    attrs: dict[str, Any],
    infos: list[TensorInfo | None],
    build: BuildInfo,
) -> RunFn | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spec.make(node, attrs, infos, dict(cand.config), build)
    except Exception as e:  # noqa: BLE001  (a build error of one candidate, never of the build)
        cand.reason = f"make failed: {_short(e)}"
        _recover(torch.device(build.device))
        return None


def _check(
    cand: Candidate,
    run: RunFn,
    inputs: list[Tensor | None],
    refs: list[Tensor],
    wanted: list[bool],
    tol: float,
    dev: torch.device,
    codes: bool = False,
) -> bool:
    """Run once and compare with the reference; on failure cand.reason says why."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = run(inputs)
            _sync(dev)  # asynchronous CUDA errors surface here, attributed to this candidate
    except Exception as e:  # noqa: BLE001
        cand.reason = f"raised {_short(e)}"
        if caught:
            cand.reason += f" (warning: {str(caught[0].message).splitlines()[0][:200]})"
        _recover(dev)
        return False
    try:
        ok, err, why = compare_outputs(outs, refs, wanted, tol, codes)
    except Exception as e:  # noqa: BLE001
        ok, err, why = False, None, f"comparison failed: {_short(e)}"
    cand.error = err
    if not ok:
        cand.reason = why
    return ok


def workspace_bytes(run: RunFn, inputs: list[Tensor | None], dev: torch.device) -> int | None:
    """Transient memory one call of `run` allocates beyond what it returns, from the caching
    allocator's peak on CUDA (None elsewhere). Measured on a call after the first, so memory
    a library keeps for good on its first call (cuBLAS's workspace) does not count."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    outs = run(inputs)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    kept = torch.cuda.memory_allocated(dev) - base  # the outputs (and anything held on to)
    del outs
    return max(0, peak - base - kept)


def _fits_workspace(
    cand: Candidate,
    run: RunFn,
    inputs: list[Tensor | None],
    dev: torch.device,
    limit: int | None,
    is_reference: bool,
) -> bool:
    """With a `limit` (--workspace), measure cand's workspace (CUDA: one more call) and hold it
    to the limit; without one, nothing is measured. The reference is the judge and the
    fallback: measured, never ruled out."""
    if limit is None:
        return True
    try:
        cand.workspace_bytes = workspace_bytes(run, inputs, dev)
    except Exception as e:  # noqa: BLE001
        _recover(dev)
        if is_reference:
            return True
        cand.reason = f"raised {_short(e)}"
        return False
    ws = cand.workspace_bytes
    if ws is None or ws <= limit or is_reference:
        return True
    cand.reason = f"needs {ws / 2**20:.1f} MiB of workspace, over the {limit / 2**20:g} MiB limit"
    return False


def _recover(dev: torch.device) -> None:
    """After a failure on the GPU: surface pending errors and release cached blocks."""
    if dev.type != "cuda":
        return
    try:
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001  (a sticky error: later candidates will report it)
        _LOG.warning("CUDA context after a failed candidate: %s", _short(e))


def _unchanged(inputs: list[Tensor | None], snapshot: list[Tensor | None]) -> bool:
    for x, s in zip(inputs, snapshot):
        if x is not None and s is not None and not torch.equal(_bits(x), s):
            return False
    return True


def _restore(inputs: list[Tensor | None], snapshot: list[Tensor | None]) -> None:
    """Put back inputs a bad candidate wrote into (the next candidates need the real ones)."""
    for x, s in zip(inputs, snapshot):
        if x is not None and s is not None and not torch.equal(_bits(x), s):
            with torch.no_grad():
                x.copy_(s.view(x.dtype).reshape(x.shape))
