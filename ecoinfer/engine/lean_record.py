"""Record an engine's kernel launches for the torch-free runtime (ecoinfer/lean).

An engine whose every layer runs a Triton kernel (or launches nothing, like a Reshape) is, at
one input shape, a fixed list of launches: which compiled kernel, which grid, which
parameters. record() runs the engine once per shape with Triton's launcher intercepted and
writes that list down, with every pointer rewritten as (region, offset):

- constant regions: memory that existed before the run (weights, tactic-owned packed copies,
  the plan's constants). A region that is exactly a weight the file already carries refers to
  it by name; any other is copied into the file's lean blob;
- input regions: the input buffers, filled by each call;
- activation regions: memory the run allocated (torch's caching allocator reuses it between
  layers; the same reuse is safe when the lean runtime replays the same launches in order).

The kernels are the cubins the engine file already carries (triton_binaries), referenced by
Triton's cache key. A GPU kernel that did not come through Triton's launcher (cuBLAS, a torch
op, a copy) makes the engine unrecordable: the profiler that watches the run names it and
the layer that launched it, and the build keeps the engine without a lean section.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoinfer.errors import EcoinferError
from ecoinfer.lean.runtime import ARENA_ALIGN, LEAN_VERSION, LeanEngine


class LeanRecordError(EcoinferError):
    """The engine cannot be run by the torch-free runtime (the message says which layer)."""


@dataclass
class _Storage:
    start: int
    end: int
    persistent: bool
    tensor: torch.Tensor | None = None  # a uint8 view of a persistent storage (its content)


@dataclass
class _Recorder:
    persistent_blocks: list[tuple[int, int]]  # (start, end) of allocations made before the run
    layer: str = ""
    launches: list[dict[str, Any]] = field(default_factory=list)
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> description
    storages: dict[int, _Storage] = field(default_factory=dict)  # start -> storage
    binaries: dict[str, bytes] = field(default_factory=dict)  # hash -> cubin

    def _persistent(self, ptr: int) -> bool:
        k = bisect.bisect_right(self.persistent_blocks, (ptr, math.inf)) - 1
        return k >= 0 and self.persistent_blocks[k][0] <= ptr < self.persistent_blocks[k][1]

    def note_tensor(self, t: torch.Tensor) -> int:
        """Remember t's storage; t's data pointer."""
        st = t.untyped_storage()
        start = st.data_ptr()
        if start not in self.storages or self.storages[start].end < start + st.nbytes():
            persistent = self._persistent(start)
            view = None
            if persistent:
                view = torch.empty(0, dtype=torch.uint8, device=t.device).set_(st)
            self.storages[start] = _Storage(start, start + st.nbytes(), persistent, view)
        return t.data_ptr()

    def pointer(self, arg: Any, what: str) -> list[Any]:
        if arg is None:
            return ["p0"]
        if isinstance(arg, torch.Tensor):
            return ["ptr", self.note_tensor(arg)]
        if hasattr(arg, "data_ptr"):
            return ["ptr", int(arg.data_ptr())]
        if isinstance(arg, int):
            return ["p0"] if arg == 0 else ["ptr", arg]
        raise LeanRecordError(f"{self.layer}: {what}: a pointer argument of type {type(arg)}")

    def launch(self, kernel: Any, grid: tuple[int, int, int], args: tuple) -> None:
        md = kernel.metadata
        key = kernel.hash
        if key not in self.kernels:
            self.binaries[key] = bytes(kernel.kernel)
            self.kernels[key] = {
                "name": kernel.name,
                "hash": key,
                "num_warps": int(md.num_warps),
                "num_ctas": int(getattr(md, "num_ctas", 1)),
                "shared": int(md.shared),
                "launch_pdl": bool(getattr(md, "launch_pdl", False)),
                "launch_cooperative_grid": bool(getattr(md, "launch_cooperative_grid", False)),
                "global_scratch_size": int(getattr(md, "global_scratch_size", 0) or 0),
                "profile_scratch_size": int(getattr(md, "profile_scratch_size", 0) or 0),
            }
        sig = list(kernel.src.signature.values())
        descs = list(getattr(md, "tensordesc_meta", None) or [])
        params: list[list[Any]] = []
        d = 0
        for ty, a in _flatten(sig, args):
            if ty == "constexpr":
                continue
            if isinstance(ty, str) and ty.startswith("tensordesc"):
                meta = descs[d] if d < len(descs) else None
                d += 1
                params += self._tensordesc(a, meta)
            elif ty[0] == "*":
                params.append(self.pointer(a, kernel.name))
            elif ty in ("fp16", "bf16", "fp32", "f32", "fp64"):
                v = float(a)  # strict JSON has no inf/nan: those go as text, float() reads both
                params.append([ty, v if math.isfinite(v) else repr(v)])
            else:
                params.append([ty, int(a)])
        params.append(["scratch", "global"])
        params.append(["scratch", "profile"])
        self.launches.append(
            {"kernel": key, "grid": list(grid), "params": params, "layer": self.layer}
        )

    def _tensordesc(self, desc: Any, meta: dict | None) -> list[list[Any]]:
        shape, strides = [int(s) for s in desc.shape], [int(s) for s in desc.strides]
        if meta is None:  # not lowered to TMA: base, shape, strides, padding, shape, strides
            return (
                [self.pointer(desc.base, "tensor descriptor")]
                + [["i64", s] for s in shape + strides]
                + [["i1", int(desc.padding == "nan")]]
                + [["i32", s] for s in shape]
                + [["i64", s] for s in strides]
            )
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST  # noqa: PLC0415

        tma_shape = list(shape)
        if meta.get("fp4_padded"):
            tma_shape[-1] *= 2
        spec = {
            "dtype": int(TMA_DTYPE_DEVICE_TO_HOST[meta["elem_type"]]),
            "elem_size": int(meta["elem_size"]),
            "swizzle": int(meta["swizzle"]),
            "block": [int(b) for b in meta["block_size"]],
            "shape": tma_shape,
            "strides": strides,
            "nan_padding": desc.padding == "nan",
        }
        return (
            [["tma", self.pointer(desc.base, "tensor descriptor")[1], spec]]
            + [["i32", s] for s in tma_shape]
            + [["i64", s] for s in strides]
        )


def _flatten(sig: list[Any], args: tuple) -> Iterator[tuple[Any, Any]]:
    for ty, a in zip(sig, args):
        if isinstance(ty, tuple):
            yield from _flatten(list(ty), tuple(a))
        else:
            yield ty, a


@contextlib.contextmanager
def _intercept(rec: _Recorder) -> Iterator[None]:
    """Every Triton launch in the block is recorded (then runs as usual)."""
    from triton.compiler.compiler import CompiledKernel  # noqa: PLC0415

    original = CompiledKernel.run

    def run(self: Any) -> Any:
        real = original.fget(self)

        def launch(gx, gy, gz, stream, function, packed, launch_md, enter, exit_, *args):  # noqa: ANN001, ANN202, PLR0913
            rec.launch(self, (gx, gy, gz), args)
            return real(gx, gy, gz, stream, function, packed, launch_md, enter, exit_, *args)

        return launch

    CompiledKernel.run = property(run)
    try:
        yield
    finally:
        CompiledKernel.run = original


def _live_blocks(device: torch.device) -> list[tuple[int, int]]:
    """(start, end) of every allocation of torch's caching allocator alive now."""
    out = []
    for seg in torch.cuda.memory_snapshot():
        if seg.get("device", device.index or 0) != (device.index or 0):
            continue
        addr = seg["address"]
        for b in seg["blocks"]:
            if b["state"] == "active_allocated":
                out.append((addr, addr + b["size"]))
            addr += b["size"]
    return sorted(out)


def _gpu_events(prof: Any) -> list[str]:
    """Names of the GPU operations (kernels, copies, memsets) the profiler saw."""
    return [e.name for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]


def _regions(storages: list[_Storage]) -> list[tuple[int, int, list[_Storage]]]:
    """Overlapping storages merged: (start, end, members), sorted."""
    out: list[tuple[int, int, list[_Storage]]] = []
    for s in sorted(storages, key=lambda s: s.start):
        if out and s.start < out[-1][1]:
            a, b, m = out[-1]
            out[-1] = (a, max(b, s.end), m + [s])
        else:
            out.append((s.start, s.end, [s]))
    return out


@dataclass
class LeanProgram:
    """One shape's launches, before regions are numbered across shapes."""

    shapes: dict[str, list[int]]
    recorder: _Recorder
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    feeds: dict[str, Any]  # the numpy inputs the run was given


def record_program(engine: Any, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> LeanProgram:
    """Run the engine once at these input shapes with every launch recorded."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415
    from ecoinfer.engine.runtime import _ControlFlow, _Plan  # noqa: PLC0415

    dev = engine.device
    ctx = engine.create_context(cuda_graphs=False)
    feeds = random_inputs(engine.graph, dict(shapes), seed)
    with torch.inference_mode():
        tensors = ctx._check(feeds)
        inputs = {k: v.to(dev).contiguous() for k, v in tensors.items()}
        plan = ctx._plan({k: tuple(v.shape) for k, v in inputs.items()})
        for node, fn in plan.steps:
            if isinstance(fn, _ControlFlow):
                raise LeanRecordError(
                    f"{node.label()}: control flow and fused-elementwise reference bodies run "
                    "through torch; the torch-free runtime cannot replay them"
                )
        ctx._execute(plan, inputs)  # warm-up: compiles, fills the tactics' lazy caches
        torch.cuda.synchronize(dev)
        rec = _Recorder(_live_blocks(dev))

        def named(node: Any, fn: Any) -> Any:
            def run(xs: list) -> list:
                rec.layer = node.name
                return fn(xs)

            return run

        traced = _Plan(
            plan.graph, [(n, named(n, f)) for n, f in plan.steps], plan.consts, plan.last_use
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the profiler's notes on its own event cycles
            with profile(activities=[ProfilerActivity.CUDA]) as prof, _intercept(rec):
                outputs = ctx._execute(traced, inputs)
                torch.cuda.synchronize(dev)
        for t in outputs.values():
            rec.note_tensor(t)
        for t in inputs.values():
            rec.note_tensor(t)
    names = {k["name"] for k in rec.kernels.values()}
    seen = _gpu_events(prof)
    foreign = [n for n in seen if n not in names]
    if foreign:
        raise LeanRecordError(
            f"the engine launches {len(foreign)} GPU operation(s) that are not Triton kernels "
            f"(first: {foreign[0]!r}); the torch-free runtime replays Triton kernels only. Build "
            "with --lean so that every layer prefers a Triton tactic, or run this engine with "
            "ecoinfer.load_engine"
        )
    if rec.launches and not seen:
        raise LeanRecordError(
            "the profiler saw no GPU activity while the engine ran, so it cannot be checked that "
            "every kernel was recorded; the lean section was not written"
        )
    return LeanProgram({k: list(v.shape) for k, v in inputs.items()}, rec, inputs, outputs, feeds)


def assemble(
    engine: Any, programs: list[LeanProgram], carried: dict[str, dict[str, str]]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The engine file's "lean" header section and its tensors (the constant blob)."""
    from ecoinfer.ir import dtypes  # noqa: PLC0415

    # weights the file carries, by the device storage they were uploaded to
    by_storage: dict[tuple[int, int], str] = {}
    for name, t in engine.weights.items():
        if t.is_contiguous() and t.storage_offset() == 0:
            st = t.untyped_storage()
            if st.nbytes() == t.numel() * t.element_size():
                by_storage[(st.data_ptr(), st.data_ptr() + st.nbytes())] = f"w/{name}"

    regions: list[dict[str, Any]] = []
    blob: list[torch.Tensor] = []
    blob_size = 0
    const_index: dict[tuple[int, int], int] = {}
    kernels: dict[str, dict[str, Any]] = {}
    out_programs = []
    for prog in programs:
        rec = prog.recorder
        input_at = {t.untyped_storage().data_ptr(): k for k, t in prog.inputs.items()}
        located: list[tuple[int, int, int]] = []  # (start, end, region index)
        for persistent in (True, False):
            for start, end, members in _regions(
                [s for s in rec.storages.values() if s.persistent == persistent]
            ):
                if persistent and start in input_at and len(members) == 1:
                    regions.append({"kind": "input", "bytes": end - start, "name": input_at[start]})
                elif persistent:
                    if (start, end) in const_index:
                        located.append((start, end, const_index[(start, end)]))
                        continue
                    name = by_storage.get((start, end)) if len(members) == 1 else None
                    if name is not None:
                        regions.append({"kind": "weight", "bytes": end - start, "tensor": name})
                    else:
                        content = torch.zeros(end - start, dtype=torch.uint8, device="cpu")
                        for m in members:
                            content[m.start - start : m.end - start] = m.tensor.cpu()
                        pad = -blob_size % ARENA_ALIGN
                        if pad:
                            blob.append(torch.zeros(pad, dtype=torch.uint8))
                            blob_size += pad
                        regions.append(
                            {"kind": "const", "bytes": end - start, "blob_offset": blob_size}
                        )
                        blob.append(content)
                        blob_size += end - start
                    const_index[(start, end)] = len(regions) - 1
                else:
                    regions.append({"kind": "activation", "bytes": end - start})
                located.append((start, end, len(regions) - 1))
        located.sort()
        starts = [a for a, _, _ in located]

        def where(ptr: int, what: str, _l=located, _s=starts) -> tuple[int, int]:  # noqa: ANN001
            k = bisect.bisect_right(_s, ptr) - 1
            if k < 0 or not _l[k][0] <= ptr < _l[k][1]:
                raise LeanRecordError(
                    f"{what}: a kernel argument points at GPU memory the recorder does not know "
                    f"(0x{ptr:x}); the torch-free runtime cannot replay it"
                )
            return _l[k][2], ptr - _l[k][0]

        launches = []
        for ln in rec.launches:
            params = []
            for p in ln["params"]:
                if p[0] == "ptr":
                    params.append(["p", *where(p[1], ln["layer"])])
                elif p[0] == "tma":
                    params.append(["tma", *where(p[1], ln["layer"]), p[2]])
                else:
                    params.append(p)
            launches.append({**ln, "params": params})
        for key, k in rec.kernels.items():
            kernels[key] = _kernel_binary(k, carried, rec.binaries[key])
        outputs = {}
        for name, t in prog.outputs.items():
            r, off = where(t.data_ptr(), f"output {name}")
            outputs[name] = {
                "region": r,
                "offset": off,
                "shape": list(t.shape),
                "strides": list(t.stride()),
                "dtype": dtypes.from_torch(t.dtype),
            }
        inputs = {
            name: {"region": where(t.data_ptr(), f"input {name}")[0], "shape": list(t.shape),
                   "dtype": dtypes.from_torch(t.dtype)}
            for name, t in prog.inputs.items()
        }  # fmt: skip
        out_programs.append(
            {"shapes": prog.shapes, "inputs": inputs, "outputs": outputs, "launches": launches}
        )
    from ecoinfer.ir.analysis import index_table_sizes  # noqa: PLC0415

    section = {
        "version": LEAN_VERSION,
        "regions": regions,
        "kernels": kernels,
        "programs": out_programs,
        "index_inputs": dict(index_table_sizes(engine.graph)),
        "blob": "lean/blob" if blob else None,
    }
    tensors = {"lean/blob": torch.cat(blob)} if blob else {}
    return section, tensors


def _kernel_binary(
    k: dict[str, Any], carried: dict[str, dict[str, str]], binary: bytes
) -> dict[str, Any]:
    """The kernel's description with its cubin: a reference into the carried binaries when
    they hold it, else the cubin itself (base64)."""
    files = carried.get(k["hash"], {})
    cubins = [f for f in files if f.endswith(".cubin")]
    if cubins:
        name = f"{k['name']}.cubin"
        return {**k, "cubin": [k["hash"], name if name in cubins else cubins[0]]}
    return {**k, "cubin_b64": base64.b64encode(binary).decode()}


def record(
    engine: Any, seed: int = 0
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[LeanProgram]]:
    """The lean section for the engine's opt shapes (one program per distinct opt shape), its
    tensors, and the recorded runs (for replay_check)."""
    if engine.device.type != "cuda":
        raise LeanRecordError(
            "the torch-free runtime runs CUDA engines only; build with --device cuda"
        )
    if not engine.triton_binaries:
        raise LeanRecordError(
            "the engine carries no compiled Triton kernels (see the build's warnings); the "
            "torch-free runtime loads its kernels from them"
        )
    progs = []
    seen = set()
    for p in engine.profiles or []:
        key = tuple(sorted((k, tuple(v)) for k, v in p.opt.items()))
        if key not in seen:
            seen.add(key)
            progs.append(record_program(engine, dict(p.opt), seed))
    if not progs:
        raise LeanRecordError("the engine has no shape profile to record")
    section, tensors = assemble(engine, progs, engine.triton_binaries)
    return section, tensors, progs


def replay_check(engine: Any, programs: list[LeanProgram], path: Any) -> dict[str, Any]:
    """Load the saved engine file with the torch-free runtime, run each recorded shape on the
    recorded inputs and compare with the recorded outputs: bit-identical is expected (the same
    kernels on the same data in the same order); a relative L2 error above 1e-3 anywhere
    means the replay is wrong, and raises."""
    import numpy as np  # noqa: PLC0415

    lean = LeanEngine(path, engine.device.index or 0)
    worst, identical = 0.0, True
    try:
        for prog in programs:
            for _ in range(2):  # the first call launches directly, the second from a CUDA graph
                got = lean.run(prog.feeds)
                for name, want_t in prog.outputs.items():
                    want = (
                        want_t.float().cpu().numpy()
                        if want_t.dtype == torch.bfloat16
                        else want_t.cpu().numpy()
                    )
                    have = got[name]
                    identical &= bool(
                        have.shape == want.shape and np.array_equal(have, want, equal_nan=True)
                    )
                    a, b = have.astype(np.float64), want.astype(np.float64)
                    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
                    worst = max(worst, err if math.isfinite(err) else math.inf)
        graphs = all(p.graph is not None for p in lean.programs)
    finally:
        lean.close()
    if worst > 1e-3:
        raise LeanRecordError(
            f"replaying the recorded launches does not reproduce the engine's outputs (relative "
            f"L2 error {worst:.2e}); the lean section was not kept (please report this)"
        )
    return {"bit_identical": identical, "max_rel_l2": worst, "cuda_graphs": graphs}
