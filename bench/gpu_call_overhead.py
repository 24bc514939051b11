"""GPU probe: where an engine call's time goes beside the CUDA-graph replay itself.

    python bench/gpu_call_overhead.py ENGINE.eng [ENGINE.eng ...] [--batch 64] [--json out]

For each engine (BERT-style token inputs, [batch, 128]; random ids on the GPU, as `compare`
feeds them), on one CUDA stream:
  * graph: the plan's CUDA graph replayed back to back (GPU time per replay: the floor);
  * async: `ctx.run(feeds, as_torch=True)` back to back without waiting (GPU-bound when the host
    keeps ahead);
  * sync: the harness's loop (event, call, event, wait) -- what `compare` and `bench` time --
    with the host time of each step of the call (validation, index poll, plan lookup, input
    copies, replay, output copies) from perf_counter around the runtime's methods.
Reads nothing but timers; changes no clock or power setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ecoinfer.engine.builder import load_engine  # noqa: E402

N = 200


def timed(fn, log: dict, key: str):  # noqa: ANN001, ANN201
    def wrap(*a, **k):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        r = fn(*a, **k)
        log.setdefault(key, []).append(time.perf_counter() - t0)
        return r

    return wrap


def trace(ctx, feeds: dict, path: str) -> None:  # noqa: ANN001
    """A Chrome trace (torch.profiler, CUPTI) of three synchronous calls: every kernel of the
    replayed graph with its start and end, for the gaps between them."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            ctx.run(feeds, as_torch=True)
            torch.cuda.synchronize()
    prof.export_chrome_trace(path)


def probe(path: str, batch: int, trace_to: str | None = None) -> dict:
    dev = torch.device("cuda")
    eng = load_engine(path, "cuda")
    ctx = eng.create_context()
    gen = torch.Generator(device=dev).manual_seed(0)
    feeds = {}
    for v in eng.graph.inputs:
        hi = 2 if "type" in v.name or "mask" in v.name else 1000
        feeds[v.name] = torch.randint(0, hi, (batch, 128), device=dev, generator=gen)
    for _ in range(5):
        ctx.run(feeds, as_torch=True)
    torch.cuda.synchronize()
    plan = next(iter(ctx._plans.values()))
    res: dict = {"engine": path, "gpu": torch.cuda.get_device_name(dev)}

    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def back_to_back(call) -> tuple[float, float]:  # noqa: ANN001
        """(host wall, GPU) ms per call of N calls queued without waiting."""
        t0 = time.perf_counter()
        e0.record()
        for _ in range(N):
            call()
        e1.record()
        e1.synchronize()
        return (time.perf_counter() - t0) * 1e3 / N, e0.elapsed_time(e1) / N

    def sync_loop(call, gpu: list | None = None, host: list | None = None) -> float:  # noqa: ANN001
        """ms per call of the harness's loop (two events per call, wait for the second);
        each call's GPU and host ms appended to `gpu` and `host` when given."""
        t_start = time.perf_counter()
        for _ in range(N):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            b.record()
            b.synchronize()
            if gpu is not None and host is not None:
                gpu.append(a.elapsed_time(b))
                host.append((t1 - t0) * 1e3)
        return (time.perf_counter() - t_start) * 1e3 / N

    res["graph_ms"] = back_to_back(plan.cuda_graph.replay)[1]
    res["async_wall_ms"], res["async_gpu_ms"] = back_to_back(lambda: ctx.run(feeds, as_torch=True))

    # the same loop around less and less of a call, alternated over rounds (same machine,
    # same minute): what each part of the call costs a caller who waits for every call
    def floor_copy_replay_clone() -> None:
        with torch.inference_mode():  # the plan's buffers are inference tensors
            torch._foreach_copy_([plan.static_in[k] for k in feeds], list(feeds.values()))
            plan.cuda_graph.replay()
            {k: v.clone() for k, v in plan.static_out.items()}

    full_path = ctx._fast_path_for
    variants = {
        "ctx.run (replay fast path)": lambda: ctx.run(feeds, as_torch=True),
        "ctx.run (full path)": lambda: ctx.run(feeds, as_torch=True),
        "copies + replay + clones only": floor_copy_replay_clone,
        "replay only": plan.cuda_graph.replay,
    }
    per: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(5):
        for name, call in variants.items():
            full = name == "ctx.run (full path)"
            ctx._fast_path_for = (lambda *a: None) if full else full_path
            ctx._fast = None
            call()
            torch.cuda.synchronize()
            per[name].append(sync_loop(call))
    ctx._fast_path_for = lambda *a: None  # the timed steps below are the full path's
    ctx._fast = None
    res["sync_variants_ms"] = {k: statistics.median(v) for k, v in per.items()}

    if ctx._index is not None:  # the index guard alone, as captured in the plan's graph
        from ecoinfer.engine import index_guard  # noqa: PLC0415

        guards = {}
        for fused in (True, False):
            index_guard.FUSED = fused
            g = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(g):
                ctx._index.guard(plan.static_in)
            guards["one Triton kernel per input" if fused else "torch form"] = g
        index_guard.FUSED = True
        gt: dict[str, list[float]] = {k: [] for k in guards}
        for _ in range(5):
            for name, g in guards.items():
                gt[name].append(back_to_back(g.replay)[1] * 1e3)
        res["guard_graph_us"] = {k: statistics.median(v) for k, v in gt.items()}

    if trace_to:
        trace(ctx, feeds, trace_to)
        res["trace"] = trace_to

    log: dict[str, list[float]] = {}
    ctx._check = timed(ctx._check, log, "check")
    ctx._plan = timed(ctx._plan, log, "plan")
    ctx._run_graph = timed(ctx._run_graph, log, "run_graph (copies, replay, clones)")
    if ctx._index is not None:
        ctx._index.poll = timed(ctx._index.poll, log, "index poll")
        ctx._index.after_call = timed(ctx._index.after_call, log, "index after_call")

    class Replay:  # the replay's own host time inside _run_graph
        def __init__(self, g: torch.cuda.CUDAGraph) -> None:
            self.replay = timed(g.replay, log, "replay")

    plan.cuda_graph = Replay(plan.cuda_graph)
    gpu: list[float] = []
    call: list[float] = []
    res["sync_per_iter_ms"] = sync_loop(lambda: ctx.run(feeds, as_torch=True), gpu, call)
    res["sync_gpu_ms"] = statistics.median(gpu)
    res["sync_call_host_ms"] = statistics.median(call)
    res["host_us"] = {k: statistics.median(v) * 1e6 for k, v in log.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("--trace-dir", help="write a Chrome trace of three calls per engine here")
    args = ap.parse_args()
    out = [
        probe(
            p, args.batch, f"{args.trace_dir}/{Path(p).stem}.trace.json" if args.trace_dir else None
        )
        for p in args.engines
    ]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    for r in out:
        print(f"\n{Path(r['engine']).name} on {r['gpu']}")
        print(f"  graph replay alone     {r['graph_ms']:.4f} ms GPU")
        print(f"  ctx.run back to back   {r['async_gpu_ms']:.4f} ms GPU, "
              f"{r['async_wall_ms']:.4f} ms host")  # fmt: skip
        print(f"  harness loop (sync)    {r['sync_per_iter_ms']:.4f} ms per call, "
              f"{r['sync_gpu_ms']:.4f} ms GPU, {r['sync_call_host_ms']:.4f} ms in ctx.run")  # fmt: skip
        for k, v in r["host_us"].items():
            print(f"    {k:36s} {v:8.1f} us host")
        for k, v in r.get("guard_graph_us", {}).items():
            print(f"  index guard graph, {k:28s} {v:8.2f} us per replay")
        print("  harness loop around (median of 5 alternated rounds):")
        for k, v in r["sync_variants_ms"].items():
            print(f"    {k:36s} {v:8.4f} ms per call")


if __name__ == "__main__":
    main()
