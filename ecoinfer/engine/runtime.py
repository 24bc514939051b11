"""Engine runtime: shape-specialised plans, chosen tactics, CUDA graphs, shared weights.

An Engine holds the plan graph (optimized, precision-assigned), the tactic chosen for each
layer, the shape profiles and the weights (on the device, shared by every context). An
ExecutionContext runs it: it checks the inputs against the engine (names, dtypes, ranks and
the profiles), specialises the plan to the concrete input shapes once per shape (shape
arithmetic folds to constants, so the plan has no host synchronisation left), and on CUDA
captures the specialised plan in a CUDA graph the first time a shape is seen and replays it
afterwards. Contexts are independent (one lock each); Engine.run keeps one per thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecoinfer.api import validate_inputs
from ecoinfer.device import host_checks_off, recover_failed_capture
from ecoinfer.engine.index_guard import DeferredIndexCheck
from ecoinfer.errors import EcoinferError, ExecutionError, IndexOutOfRangeError, InputShapeError
from ecoinfer.ir import dtypes
from ecoinfer.ir.analysis import index_table_sizes
from ecoinfer.ir.graph import Graph, Node, Value, all_inputs, last_uses
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_flags import tf32
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel
from ecoinfer.kernels.triton.pdl import pdl_scope

Tensor = torch.Tensor
RunFn = Callable[[list[Tensor | None]], list[Tensor]]

# Inputs that ops read as host-side parameters (shapes, axes, sizes): small integer weights
# feeding only these stay on the CPU, so reading them never synchronises with the GPU.
HOST_PARAM_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 3}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "TopK": frozenset({1}),
    "OneHot": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    **{
        op: frozenset({1})
        for op in (
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceSumSquare",
        )
    },
}
_MAX_SPECIALISATIONS = 16


@dataclass
class ShapeProfile:
    """Allowed input shapes: min <= shape <= max per dim; opt is what the builder tunes for."""

    min: dict[str, tuple[int, ...]]
    opt: dict[str, tuple[int, ...]]
    max: dict[str, tuple[int, ...]]

    def admits(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        for name, s in shapes.items():
            lo, hi = self.min.get(name), self.max.get(name)
            if lo is None or hi is None:
                continue
            if len(s) != len(lo) or any(not (a <= d <= b) for a, d, b in zip(lo, s, hi)):
                return False
        return True

    def describe(self, name: str) -> str:
        lo, hi = self.min.get(name), self.max.get(name)
        if lo is None or hi is None:
            return "any"
        return "x".join(str(a) if a == b else f"[{a}..{b}]" for a, b in zip(lo, hi))

    def to_dict(self) -> dict:
        return {k: {n: list(s) for n, s in getattr(self, k).items()} for k in ("min", "opt", "max")}

    @staticmethod
    def from_dict(d: dict) -> ShapeProfile:
        return ShapeProfile(
            *({n: tuple(s) for n, s in d[k].items()} for k in ("min", "opt", "max"))
        )


@dataclass
class LayerChoice:
    """The tactic chosen for one layer (by node name) and what the builder measured."""

    tactic: str = "reference"
    config: dict = field(default_factory=dict)
    precision: str = "float32"
    time_ms: float | None = None
    runner_up: str | None = None
    runner_up_ms: float | None = None
    inputs: list[Any] = field(default_factory=list)  # [shape, dtype, is_weight] at opt shapes


def _host_params(graph: Graph) -> set[str]:
    """Small integer weights read only as host parameters."""
    readers: dict[str, list[tuple[str, int]]] = {}
    for n in graph.nodes:
        for k, i in enumerate(n.inputs):
            if i:
                readers.setdefault(i, []).append((n.op_type if not n.domain else "", k))
    out = set()
    for name, t in graph.initializers.items():
        if t.dtype not in (torch.int64, torch.int32) or t.numel() > 1024:
            continue
        uses = readers.get(name, [])
        if uses and all(k in HOST_PARAM_INPUTS.get(op, ()) for op, k in uses):
            out.add(name)
    return out


def _specialise(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> Graph:
    """The plan graph with concrete input shapes and all shape arithmetic folded away."""
    from ecoinfer.passes.fold_constants import fold_constants  # noqa: PLC0415
    from ecoinfer.passes.manager import clone_graph  # noqa: PLC0415

    g = clone_graph(graph)
    for v in g.inputs:
        if v.name in shapes:
            v.shape = tuple(shapes[v.name])
            g.values[v.name] = Value(v.name, v.dtype, v.shape)
    # forget inferred intermediate shapes: they are re-inferred from the concrete inputs
    keep = set(g.input_names) | set(g.output_names)
    g.values = {k: v for k, v in g.values.items() if k in keep}
    for o in g.outputs:
        g.values[o.name] = Value(o.name, o.dtype, None)
    g.infer_shapes()
    fold_constants(g)
    return g


class Engine:
    """A built engine: plan graph, chosen tactics, profiles, weights on one device."""

    def __init__(
        self,
        graph: Graph,
        choices: dict[str, LayerChoice],
        profiles: list[ShapeProfile],
        device: str,
        precision: str,
        fingerprint: dict,
        report: dict | None = None,
        source: str = "",
        profile_choices: list[dict[str, LayerChoice]] | None = None,
    ):
        self.graph = graph
        self.choices = choices  # the first profile's (and every layer's precision)
        # profile k >= 1: the layers whose tactic at that profile's opt shapes differs from
        # the first profile's (index k - 1); a call runs the tactics of the first profile
        # that admits its shapes, as TensorRT selects an optimization profile
        self.profile_choices: list[dict[str, LayerChoice]] = list(profile_choices or [])
        self.profiles = profiles
        self.device = torch.device(device)
        self.precision = precision
        self.fingerprint = fingerprint
        self.report = report or {}
        self.source = source
        # how errors name the engine: its file once loaded (load_engine), else its model
        self.name = source or "engine"
        self.warnings: list[str] = []
        # programmatic dependent launch for the Triton kernels (kernels/triton/pdl.py): set by
        # the builder where it timed faster
        self.pdl = False
        # compiled Triton kernels the engine file carries (engine/triton_binaries.py)
        self.triton_binaries: dict[str, dict[str, str]] = {}
        # the recorded launches for the torch-free runtime (engine/lean_record.py; --lean)
        self.lean_section: dict | None = None
        self.lean_tensors: dict[str, torch.Tensor] = {}
        self._host = _host_params(graph)
        self.weights = {
            k: (t if k in self._host else t.to(self.device)) for k, t in graph.initializers.items()
        }
        self._tuned: dict[str, RunFn] = self._make_tuned(choices)
        self._tuned_by_profile = [self._tuned] + [
            self._overridden(over) for over in self.profile_choices
        ]
        self._index_inputs = index_table_sizes(graph)
        self._local = threading.local()

    # ------------------------------------------------------------------ tactics
    def _overridden(self, over: dict[str, LayerChoice]) -> dict[str, RunFn]:
        """The first profile's tactics with another profile's differing choices in place (a
        layer whose choice there is the reference kernel runs that)."""
        fns = {k: f for k, f in self._tuned.items() if k not in over}
        fns.update(self._make_tuned(over))
        return fns

    def _make_tuned(self, choices: dict[str, LayerChoice]) -> dict[str, RunFn]:
        from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for  # noqa: PLC0415

        fns: dict[str, RunFn] = {}
        for n in self.graph.nodes:
            ch = choices.get(n.name)
            if ch is None or ch.tactic == "reference":
                continue
            specs = {
                t.name: t for t in tactics_for(n.op_type, n.domain, self.device.type, ch.precision)
            }
            spec = specs.get(ch.tactic)
            infos = [
                None if i is None else TensorInfo(tuple(i[0]), getattr(torch, i[1]), bool(i[2]))
                for i in ch.inputs
            ]
            build = BuildInfo(self.device, ch.precision, self.weights)
            attrs = {**get_schema(n.op_type, n.domain).attrs, **n.attrs}
            if spec is None:
                self.warnings.append(
                    f"{n.name}: tactic {ch.tactic} is not available here; using the reference kernel"
                )
                continue
            try:
                fn = spec.make(n, attrs, infos, dict(ch.config), build)
            except Exception as e:  # noqa: BLE001  (the reference kernel still runs the layer)
                self.warnings.append(
                    f"{n.name}: tactic {ch.tactic} failed to load ({e}); using the reference kernel"
                )
                continue
            if fn is None:  # e.g. a library that offers fewer algorithms than at build time
                self.warnings.append(
                    f"{n.name}: tactic {ch.tactic} does not apply here; using the reference kernel"
                )
                continue
            fns[n.name] = _with_precision(fn, ch.precision, self.device)
        return fns

    # ------------------------------------------------------------------ API
    def create_context(self, cuda_graphs: bool = True) -> ExecutionContext:
        return ExecutionContext(self, cuda_graphs)

    def run(self, feeds: Mapping[str, np.ndarray | Tensor], as_torch: bool = False) -> dict:
        """Run with this thread's own execution context (created on first use)."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self.create_context()
        return ctx.run(feeds, as_torch=as_torch)

    def save(self, path: str) -> str:
        from ecoinfer.engine.builder import save_engine  # noqa: PLC0415

        return str(save_engine(self, path))

    def layer_table(self) -> list[dict]:
        rows = []
        # a quantized layer shows its 8-bit type ("fp8", or "fp8 emul" on a float kernel)
        labels = (self.report.get("quantization") or {}).get("layer_precision") or {}
        for n in self.graph.nodes:
            ch = self.choices.get(n.name, LayerChoice())
            rows.append(
                {
                    "layer": n.name,
                    "op": n.op_type if not n.domain else f"{n.domain}.{n.op_type}",
                    "precision": labels.get(n.name, ch.precision),
                    "tactic": ch.tactic,
                    "time_ms": ch.time_ms,
                    "runner_up": ch.runner_up,
                    "runner_up_ms": ch.runner_up_ms,
                }
            )
        return rows


def _clock_hz(dev: torch.device) -> float:
    """The GPU's clock in Hz (torch.cuda._sleep counts cycles); 2 GHz where torch won't say."""
    khz = getattr(torch.cuda.get_device_properties(dev), "clock_rate", 0) or 2_000_000
    return khz * 1e3


def _with_precision(fn: RunFn, precision: str, device: torch.device) -> RunFn:
    """A TF32 layer on CUDA runs with TF32 switched on; the switch is process-wide, so it is
    set and restored under torch_flags' lock (other threads' FP32 layers pin it off there)."""
    if precision != "tf32" or device.type != "cuda":
        return fn

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        with tf32(True):
            return fn(xs)

    return run


def _no_subgraph(graph: Graph, feeds: dict) -> list[Tensor]:
    raise EcoinferError("internal: a node without subgraphs asked to run one")


class _ControlFlow:
    """If/Loop/Scan: their bodies read values of the enclosing plan, so they get its env."""

    def __init__(self, node: Node, fn, attrs: dict, device: torch.device, graph: Graph):  # noqa: ANN001
        from ecoinfer.kernels.runner import ReferenceRunner  # noqa: PLC0415

        self.node, self.fn, self.attrs, self.device, self.graph = node, fn, attrs, device, graph
        self.body = None
        if node.op_type == "FusedElementwise" and node.domain == "ecoinfer":
            # a closed body: one runner, its constants moved to the device once (copies
            # during a call would break CUDA-graph capture)
            self.body = ReferenceRunner(attrs["body"], device)

    def with_env(self, xs: list[Tensor | None], env: dict[str, Tensor]) -> list[Tensor]:
        from ecoinfer.kernels.runner import ReferenceRunner  # noqa: PLC0415

        if self.body is not None:
            body = self.body.graph
            out = self.body.run(dict(zip(body.input_names, xs)))
            return [out[o] for o in body.output_names]

        ctx = ReferenceRunner.for_subgraphs(self.graph, self.device).subgraph_context(
            self.node, self.attrs, env
        )
        return self.fn(ctx, xs)


@dataclass
class _Plan:
    graph: Graph
    steps: list[tuple[Node, RunFn]]
    consts: dict[str, Tensor]
    last_use: dict[str, int]
    cuda_graph: Any = None
    static_in: dict[str, Tensor] | None = None
    static_out: dict[str, Tensor] | None = None
    graph_error: str | None = None
    # recorded after the last replay's output copies: a replay from another CUDA stream
    # waits for it, since every replay of the plan shares its input and output buffers
    done: Any = None
    done_on: int | None = None  # the stream (handle) done was recorded on


class _CaptureGate:
    """Process-wide: a CUDA-graph capture runs while no other context of the process touches
    the GPU; everything else (replays, eager runs, copies) may overlap everything but a
    capture. On an H200, four threads capturing and running at once aborted the process in
    torch's host-to-device copy. Writers go first, so a capture is not starved.

    Lock order: a context's own lock, then the gate; never the gate twice in one thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_GATE = _CaptureGate()


def _feed_signature(feeds: Mapping[str, Any]) -> tuple | None:
    """(name, dtype, shape, device) of each feed when all are torch tensors, else None."""
    sig = []
    for k, v in feeds.items():
        if not isinstance(v, Tensor):
            return None
        sig.append((k, v.dtype, v.shape, v.device))
    return tuple(sig)


def _shape_key(shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    """A context's key for the plan (and CUDA graph) of these input shapes."""
    return tuple(sorted(shapes.items()))


class ExecutionContext:
    """Runs an engine; specialised plans (and CUDA graphs) are cached per input shape."""

    def __init__(self, engine: Engine, cuda_graphs: bool = True):
        self.engine = engine
        self._cuda = engine.device.type == "cuda"
        self.use_graphs = cuda_graphs and self._cuda
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._lock = threading.Lock()
        self.graph_replays = 0
        # on CUDA, index inputs are also checked on the device, with no host sync: the guard
        # clamps them inside the plan (and its CUDA graph) and flags the calls that needed it
        self._index: DeferredIndexCheck | None = None
        if self._cuda and engine._index_inputs:
            self._index = DeferredIndexCheck(engine._index_inputs, engine.device, engine.name)
        # (name, dtype, shape, device) of the last all-tensor feeds that passed validation and
        # the profile check: a serving loop feeds the same kinds of tensor call after call,
        # and validating them again held the GPU idle for ~30 us of each synchronous call
        self._valid_sig: tuple | None = None
        # (feed signature, plan) of the last call that replayed a CUDA graph from tensor feeds
        # already on the GPU, none of them needing a host check: a call with the same
        # signature goes straight to the replay (no shape keys, plan lookup or gate choice:
        # ~25 us of host time before the GPU had work, in a loop that waits for each call)
        self._fast: tuple[tuple, _Plan] | None = None

    def _shared(self) -> contextlib.AbstractContextManager[None]:
        """Shared use of the GPU (_CaptureGate); nothing to order on the CPU."""
        return _GATE.shared() if self._cuda else contextlib.nullcontext()

    # ------------------------------------------------------------------ checks
    def _check(
        self, feeds: Mapping[str, np.ndarray | Tensor], on_device: bool = False
    ) -> dict[str, Tensor]:
        """on_device: leave index inputs that are already on the GPU to the device-side guard
        (a host check of a GPU tensor waits for the GPU)."""
        eng = self.engine
        sig = _feed_signature(feeds)
        if sig is not None and sig == self._valid_sig:  # what passed before: same names,
            tensors = {v.name: feeds[v.name] for v in eng.graph.inputs}  # dtypes, shapes
            return self._check_indices(tensors, on_device)
        tensors = validate_inputs(eng.graph, feeds, eng.name)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        if eng.profiles and not any(p.admits(shapes) for p in eng.profiles):
            for name, s in shapes.items():
                if not any(p.admits({name: s}) for p in eng.profiles):
                    allowed = "; ".join(
                        f"profile {k}: {p.describe(name)}" for k, p in enumerate(eng.profiles)
                    )
                    raise InputShapeError(
                        f"{eng.name}: input '{name}' has shape {list(s)}, outside every "
                        f"shape profile of the engine ({allowed}); rebuild with --max-shapes covering it"
                    )
            raise InputShapeError(
                f"{eng.name}: the input shapes {shapes} fit no single profile together"
            )
        self._valid_sig = sig
        return self._check_indices(tensors, on_device)

    def _check_indices(self, tensors: dict[str, Tensor], on_device: bool) -> dict[str, Tensor]:
        """Index inputs in range (those on the GPU left to the device guard when on_device)."""
        eng = self.engine
        checked = [
            (k, n)
            for k, n in eng._index_inputs.items()
            if tensors[k].numel() and not (on_device and self._index and tensors[k].is_cuda)
        ]
        if checked:
            # every index input's min and max in one host round-trip: on GPU tensors each
            # .item() is a device sync, and this check runs on every call
            ranges = torch.stack(
                [
                    torch.stack(torch.aminmax(tensors[k].reshape(-1))).to(torch.int64)
                    for k, _ in checked
                ]
            ).tolist()
            for (name, n), (lo, hi) in zip(checked, ranges):
                if lo < -n or hi >= n:
                    bad = hi if hi >= n else lo
                    raise IndexOutOfRangeError(
                        f"{eng.name}: input '{name}' holds index {bad}, outside the "
                        f"table it indexes (valid: [{-n}, {n - 1}])"
                    )
        return tensors

    # ------------------------------------------------------------------ plans
    def _plan(self, shapes: dict[str, tuple[int, ...]]) -> _Plan:
        key = _shape_key(shapes)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        eng = self.engine
        prof = next((i for i, p in enumerate(eng.profiles) if p.admits(shapes)), 0)
        tuned = eng._tuned_by_profile[prof] if prof < len(eng._tuned_by_profile) else eng._tuned
        g = _specialise(eng.graph, shapes)
        host = _host_params(g)
        consts = {}
        for k, t in g.initializers.items():
            if k in eng.weights and eng.graph.initializers.get(k) is t:
                consts[k] = eng.weights[k]  # shared with every context
            else:
                consts[k] = t if k in host else t.to(eng.device)
        steps = [(n, self._step_fn(g, n, tuned)) for n in g.nodes]
        plan = _Plan(g, steps, consts, last_uses(g.nodes))
        self._plans[key] = plan
        if len(self._plans) > _MAX_SPECIALISATIONS:
            _, gone = self._plans.popitem(last=False)
            if self._fast is not None and self._fast[1] is gone:
                self._fast = None
        return plan

    def _step_fn(self, g: Graph, node: Node, tuned: dict[str, RunFn]) -> RunFn:
        fn = tuned.get(node.name)
        if fn is not None:
            return fn
        fn = get_kernel(node.op_type, node.domain)
        if fn is None:
            raise EcoinferError(f"{node.label()}: no kernel for op {node.op_type}")
        attrs = {**get_schema(node.op_type, node.domain).attrs, **node.attrs}
        device = self.engine.device
        if any(isinstance(v, Graph) for v in node.attrs.values()):
            return _ControlFlow(node, fn, attrs, device, g)

        def run(xs: list[Tensor | None], _n: Node = node, _fn=fn, _a=attrs) -> list[Tensor]:
            return _fn(KernelContext(_n, _a, device, _no_subgraph, g.opset), xs)

        return run

    def _execute(
        self, plan: _Plan, inputs: dict[str, Tensor], marks: list | None = None
    ) -> dict[str, Tensor]:
        # the engine's launch mode (chosen by timing at build): eager runs, warm-ups and CUDA
        # graph captures alike
        with pdl_scope(self.engine.pdl):
            return self._execute_steps(plan, inputs, marks)

    def _execute_steps(
        self, plan: _Plan, inputs: dict[str, Tensor], marks: list | None
    ) -> dict[str, Tensor]:
        env: dict[str, Tensor] = dict(plan.consts)
        env.update(inputs)
        outs = set(plan.graph.output_names)
        cuda = self.engine.device.type == "cuda"
        for k, (node, fn) in enumerate(plan.steps):
            xs = [env[i] if i else None for i in node.inputs]
            if marks is not None:  # profile_layers(): time this layer
                start = torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()
                if cuda:
                    start.record()
            try:
                ys = fn.with_env(xs, env) if isinstance(fn, _ControlFlow) else fn(xs)
            except EcoinferError:
                raise
            except Exception as e:  # a kernel failure names the layer
                raise ExecutionError(
                    f"{node.label()} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                ) from e
            if marks is not None:
                end = torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()
                if cuda:
                    end.record()
                marks.append((node.name, start, end))
            for name, y in zip(node.outputs, ys):
                if name:
                    env[name] = y
            for i in all_inputs(node):
                if i and plan.last_use.get(i) == k and i not in outs and i not in plan.consts:
                    env.pop(i, None)
        return {o: env[o] for o in plan.graph.output_names}

    def _execute_guarded(self, plan: _Plan, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._execute(plan, self._index.guard(inputs) if self._index else inputs)

    def _run_graph(self, plan: _Plan, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if plan.cuda_graph is None and plan.graph_error is None:
            try:
                plan.static_in = {k: v.clone() for k, v in inputs.items()}
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # warm-up outside the capture, as CUDA asks
                    self._execute_guarded(plan, plan.static_in)
                torch.cuda.current_stream().wait_stream(stream)
                cg = torch.cuda.CUDAGraph()
                # thread-local: another thread's context may be running eagerly (its warm-up,
                # a host-synchronising check) or capturing at the same time; in CUDA's
                # default global mode its calls would fail while this capture is open
                with torch.cuda.graph(cg, capture_error_mode="thread_local"):
                    plan.static_out = self._execute_guarded(plan, plan.static_in)
                plan.cuda_graph = cg
            except Exception as e:  # noqa: BLE001  (some plan cannot be captured: run it eagerly)
                plan.graph_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                plan.cuda_graph = None
                recover_failed_capture(self.engine.device)
                self.engine.warnings.append(
                    f"CUDA graph capture failed, running eagerly: {plan.graph_error}"
                )
        if plan.cuda_graph is None:
            return self._execute_guarded(plan, inputs)
        return self._replay(plan, inputs)

    def _replay(self, plan: _Plan, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One replay of the plan's CUDA graph on these inputs (already checked, on the
        device), its outputs copied out."""
        assert plan.static_in is not None and plan.static_out is not None
        stream = torch.cuda.current_stream()
        if plan.done is not None and plan.done_on != stream.cuda_stream:
            stream.wait_event(plan.done)  # no host sync: the GPU orders the two replays
        # one call for every input copy (a copy_ each cost ~15 us of host time before the GPU
        # had work)
        torch._foreach_copy_([plan.static_in[k] for k in inputs], list(inputs.values()))
        plan.cuda_graph.replay()
        self.graph_replays += 1
        out = {k: v.clone() for k, v in plan.static_out.items()}
        if plan.done is None:
            plan.done = torch.cuda.Event()
        plan.done.record(stream)
        plan.done_on = stream.cuda_stream
        return out

    def _index_flags_after_queueing(self) -> None:
        """Earlier calls whose index flags have come back are looked at once this call's work
        is queued (the GPU does not wait for this bookkeeping), and before this call's own
        flags are queued, so that a bad call itself always returns and a later call or
        synchronize() raises, however fast the GPU was."""
        if self._index is not None:
            self._index.poll()
            self._index.after_call(torch.cuda.current_stream(self.engine.device))

    def _fast_path_for(self, feeds: Mapping[str, Any], plan: _Plan) -> tuple | None:
        """The signature under which later calls may go straight to this plan's replay: tensor
        feeds that passed validation, each already on its buffer's device (a CUDA graph's:
        the GPU, where the guard in the graph clamps and flags index inputs, so none is left
        to a host check). None where some call of this kind needs the full path."""
        sig = self._valid_sig
        if (
            sig is None
            or plan.cuda_graph is None
            or plan.static_in is None
            or sig != _feed_signature(feeds)
        ):
            return None
        if any(t.device != plan.static_in[k].device for k, t in feeds.items()):
            return None
        return sig

    def profile_layers(
        self, feeds: Mapping[str, np.ndarray | Tensor], iterations: int = 20
    ) -> dict[str, list[float]]:
        """Per-layer times in seconds, one entry per call, keyed by layer name: the plan runs
        eagerly (no CUDA graph) with a CUDA event pair around every layer, queued behind a spin
        kernel so that the host is ahead of the GPU: the times are GPU time per layer, as a
        graph replay sees it (host wall time on the CPU)."""
        with self._shared():
            tensors = self._check(feeds)
        dev = self.engine.device
        times: dict[str, list[float]] = {}
        with self._lock, self._shared(), torch.inference_mode():
            inputs = {k: v.to(dev, non_blocking=True) for k, v in tensors.items()}
            plan = self._plan({k: tuple(v.shape) for k, v in inputs.items()})
            self._execute(plan, inputs)  # warm-up, with the kernels' index checks
            with host_checks_off():  # no syncs from here: the host must stay ahead of the GPU
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                self._execute(plan, inputs, [])  # how long the host takes to enqueue it, timed
                host_s = time.perf_counter() - t0
                for _ in range(iterations):
                    marks: list[tuple[str, Any, Any]] = []
                    if dev.type == "cuda":
                        # hold the GPU in a spin kernel while the host enqueues the whole plan,
                        # so the events time each layer's kernels and not the host's launch gaps
                        torch.cuda.synchronize(dev)
                        torch.cuda._sleep(int((1.5 * host_s + 1e-3) * _clock_hz(dev)))
                    self._execute(plan, inputs, marks)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                        for name, a, b in marks:
                            times.setdefault(name, []).append(a.elapsed_time(b) / 1e3)
                    else:
                        for name, a, b in marks:
                            times.setdefault(name, []).append(b - a)
        return times

    def run(self, feeds: Mapping[str, np.ndarray | Tensor], as_torch: bool = False) -> dict:
        """Outputs as numpy arrays, or (as_torch) as tensors on the engine's device, which on
        CUDA are still being computed when this returns. An index input already on the GPU
        is then checked on the GPU: a bad one raises IndexOutOfRangeError from a later call
        or from synchronize(). With numpy outputs every check raises in the call itself."""
        fast = self._fast
        if fast is not None and as_torch and _feed_signature(feeds) == fast[0]:
            with self._lock, torch.inference_mode(), _GATE.shared():
                if self._fast is fast:  # not evicted meanwhile by another thread's call
                    out = self._replay(fast[1], feeds)
                    self._index_flags_after_queueing()
                    return out
        on_gpu = self._cuda and any(isinstance(v, Tensor) and v.is_cuda for v in feeds.values())
        with self._shared() if on_gpu else contextlib.nullcontext():  # checks may read the GPU
            tensors = self._check(feeds, on_device=as_torch)
        dev = self.engine.device
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        with self._lock, torch.inference_mode():
            # the first call at a shape captures its CUDA graph: alone on the GPU (a plan not
            # made yet is made in there too, so each call takes the gate once)
            known = self._plans.get(_shape_key(shapes))
            capture = self.use_graphs and (
                known is None or (known.cuda_graph is None and known.graph_error is None)
            )
            with _GATE.exclusive() if capture else self._shared():
                plan = self._plan(shapes)
                inputs = {k: v.to(dev, non_blocking=True) for k, v in tensors.items()}
                if self.use_graphs:
                    out = self._run_graph(plan, inputs)
                    if as_torch and plan.cuda_graph is not None:
                        sig = self._fast_path_for(feeds, plan)
                        self._fast = (sig, plan) if sig is not None else None
                else:
                    out = self._execute_guarded(plan, inputs)
                self._index_flags_after_queueing()
        if as_torch:
            return out
        if self._index is None:
            with self._shared():
                return {k: dtypes.torch_to_numpy(v) for k, v in out.items()}
        with self._lock, self._shared():
            arrays = {k: dtypes.torch_to_numpy(v) for k, v in out.items()}
            self._index.poll(wait=True)
        return arrays

    def synchronize(self) -> None:
        """Wait for this context's calls on the current stream and raise the index errors
        they found (see run)."""
        if self._cuda:
            with self._shared():
                torch.cuda.current_stream(self.engine.device).synchronize()
        if self._index is not None:
            with self._lock, self._shared():
                self._index.poll(wait=True)
