"""Peers: the frameworks people serve with today, run on the same inputs and the same device.

`compare()` runs, one after the other and each through `harness.run_benchmark`:

- PyTorch eager FP32 and eager FP16 (FP16 in channels_last when an input is a 4-D image),
- torch.compile of the FP32 and the FP16 module (mode "default" for transformers,
  "max-autotune-no-cudagraphs" for CNNs; the compile time is recorded),
- onnxruntime FP32 (CPUExecutionProvider on a CPU run; CUDAExecutionProvider on a GPU run),
- the ecoinfer reference runtime in FP32 (`ecoinfer.api.Model.run`), and
- an ecoinfer engine built for exactly these input shapes and tuned on this device: FP16
  with CUDA graphs on a GPU, FP32 on the CPU (`prepare_ecoinfer_engine`).

The PyTorch peers need the nn.Module: the Python API takes it (`compare(path, module=m)`),
the CLI knows the bundled MiniLM and a random-weight BERT-base by name (`--torch-model`).
A peer that cannot run comes back as a skipped BenchResult that says why. Every result
carries, in `extra`, its error against the FP32 baseline's outputs (relative L2 and max
abs) and its energy relative to that baseline: PyTorch eager FP32 when it ran, else
ecoinfer's reference FP32.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import inspect
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecoinfer.bench.harness import BenchConfig, BenchResult, device_name, run_benchmark
from ecoinfer.device import pick_device
from ecoinfer.errors import EcoinferError, InputError

# key -> display name; the order is the order they run in and appear in the table
PEERS: dict[str, str] = {
    "torch-fp32": "PyTorch eager FP32",
    "torch-fp16": "PyTorch eager FP16",
    "torch-compile": "torch.compile FP32",
    "torch-compile-fp16": "torch.compile FP16",
    "torch-compile-max-fp16": "torch.compile FP16",
    "onnxruntime": "onnxruntime FP32",
    "ecoinfer-fp32": "ecoinfer reference fp32",
    "ecoinfer-engine": "ecoinfer engine",
}
ENGINE_FILE = "engine:"  # --peers engine:FILE.eng runs a built engine file as a peer
TORCH_PEERS = (
    "torch-fp32",
    "torch-fp16",
    "torch-compile",
    "torch-compile-fp16",
    "torch-compile-max-fp16",
)
NO_MODULE = "give the nn.Module (Python API) or --torch-model minilm|bert-base for PyTorch peers"
TORCH_MODELS = ("minilm", "bert-base", "resnet50")
COMPILE_MODE_TRANSFORMER = "default"
COMPILE_MODE_CNN = "max-autotune-no-cudagraphs"
# torch-compile-max-fp16: Inductor's autotuned kernels replayed from CUDA graphs, for every
# model. The default-mode transformer peer launches each kernel from Python and is bound by
# the host at BERT-base b64 (BENCHMARKS.md, session 10); this is the strongest torch.compile
COMPILE_MODE_MAX = "max-autotune"
# above this relative error the torch module and the ONNX file are not the same function
SAME_MODEL_REL_ERROR = 0.05


@dataclass
class Comparison:
    """One `compare` run: every peer's BenchResult (skipped ones included), same inputs."""

    model: str
    device: str  # "cpu" | "cuda"
    device_name: str
    batch: int
    inputs: dict[str, str]  # input name -> "int64[8x128]"
    baseline: str | None  # name of the FP32 baseline result (energy and error reference)
    results: list[BenchResult]
    config: BenchConfig
    environment: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def result(self, key: str) -> BenchResult | None:
        """The result of a peer by key ("torch-fp32", ...) or display name."""
        for r in self.results:
            if r.extra.get("peer") == key or r.name == key:
                return r
        return None


# ---------------------------------------------------------------------------- torch models
def load_torch_model(name: str) -> Any:
    """A bundled nn.Module by name: "minilm" (all-MiniLM-L6-v2, real weights) or "bert-base"
    (transformers BertModel(BertConfig()): hidden 768, 12 layers, random weights, seed 0)."""
    if name == "minilm":
        from ecoinfer.models.minilm import load_minilm_module  # noqa: PLC0415

        return load_minilm_module()
    if name == "bert-base":
        import torch  # noqa: PLC0415

        try:
            from transformers import BertConfig, BertModel  # noqa: PLC0415
        except ImportError:
            raise EcoinferError(
                "--torch-model bert-base needs transformers: pip install transformers"
            ) from None
        torch.manual_seed(0)  # random weights are fine for speed and energy; fixed for errors
        return BertModel(BertConfig()).eval()
    if name == "resnet50":
        import torch  # noqa: PLC0415

        try:
            import torchvision  # noqa: PLC0415
        except Exception:  # noqa: BLE001  (PyPI torchvision does not load beside some torch builds)
            raise EcoinferError("--torch-model resnet50 needs a working torchvision") from None
        torch.manual_seed(0)
        return torchvision.models.resnet50(weights=None).eval()
    raise InputError(
        f"--torch-model {name}: unknown model; choose one of {', '.join(TORCH_MODELS)}"
    )


def export_torch_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX export of a bundled torch model (dynamo exporter, batch/seq axes), cached."""
    import torch  # noqa: PLC0415

    base = Path(
        cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecoinfer"
    )
    base.mkdir(parents=True, exist_ok=True)
    ver = torch.__version__.split("+")[0]
    if name == "minilm":
        from ecoinfer.models import minilm  # noqa: PLC0415

        path = base / f"all-MiniLM-L6-v2.dynamo.torch-{ver}.onnx"  # the demo's cache file
        if not path.exists():
            minilm.export_minilm_onnx(path, dynamo=True)
        return path
    if name == "bert-base":
        from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

        path = base / f"bert-base-random-seed0.dynamo.torch-{ver}.onnx"
        if not path.exists():
            module = load_torch_model(name)
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, 30522, (2, 16), generator=g)
            mask = torch.ones(2, 16, dtype=torch.int64)
            mask[1, 12:] = 0  # padding, so the exporter keeps the mask general
            example = {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros(2, 16, dtype=torch.int64),
            }
            export_module(
                module,
                example,
                path,
                input_names=list(example),
                output_names=["last_hidden_state", "pooler_output"],
                dynamic_axes={k: {0: "batch", 1: "seq"} for k in example},
                dynamo=True,
            )
        return path
    if name == "resnet50":
        from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

        path = base / f"resnet50-random-seed0.dynamo.torch-{ver}.onnx"
        if not path.exists():
            export_module(
                load_torch_model(name),
                (torch.randn(2, 3, 224, 224),),
                path,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}},
                dynamo=True,
            )
        return path
    raise InputError(
        f"--torch-model {name}: unknown model; choose one of {', '.join(TORCH_MODELS)}"
    )


# ---------------------------------------------------------------------------- inputs
def input_shapes(
    graph: Any, batch: int, seq: int, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every graph input: axis 0 is the batch, symbolic sequence axes
    (axis 1 of a 2-D input, or any axis named like seq/sequence/len/token) get `seq`."""
    from ecoinfer.ir.analysis import check_shape_names  # noqa: PLC0415

    check_shape_names(graph, dict(overrides or {}))
    out: dict[str, tuple[int, ...]] = {}
    over = dict(overrides or {})
    for v in graph.inputs:
        if v.name in over:
            out[v.name] = tuple(over[v.name])
            continue
        if v.shape is None:
            raise InputError(
                f"input '{v.name}' has an unknown rank; give its shape with --shapes {v.name}:DIMS"
            )
        dims: list[int] = []
        for k, d in enumerate(v.shape):
            if k == 0:
                if isinstance(d, int) and d != batch:
                    raise InputError(
                        f"input '{v.name}' has a fixed batch dimension of {d} (shape "
                        f"{v.type_str()}); use --batch {d} or export the model with a dynamic "
                        "batch axis"
                    )
                dims.append(batch)
            elif isinstance(d, int):
                dims.append(d)
            elif len(v.shape) == 2 or any(
                s in str(d).lower() for s in ("seq", "len", "token", "sentence")
            ):
                dims.append(seq)
            else:
                raise InputError(
                    f"input '{v.name}' ({v.type_str()}): axis {k} ('{d}') is symbolic and not a "
                    f"sequence axis; give the shape with --shapes {v.name}:DIMS"
                )
        out[v.name] = tuple(dims)
    return out


def _fmt_input(a: np.ndarray) -> str:
    return f"{a.dtype}[{'x'.join(map(str, a.shape))}]"


def _is_image(feeds: Mapping[str, np.ndarray]) -> bool:
    return any(a.ndim == 4 and a.dtype.kind == "f" for a in feeds.values())


# ---------------------------------------------------------------------------- outputs
def flatten_outputs(out: Any) -> list[Any]:
    """Tensors/arrays of a model output in order: a tensor, a tuple/list, a dict or a
    transformers ModelOutput (its non-None fields in order)."""
    import torch  # noqa: PLC0415

    if out is None:
        return []
    if isinstance(out, torch.Tensor | np.ndarray):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def _to_f64(x: Any) -> np.ndarray:
    import torch  # noqa: PLC0415

    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:  # an onnxruntime OrtValue
        x = x.numpy()
    except AttributeError:
        pass
    return np.asarray(x, dtype=np.float64)


def output_errors(outs: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Errors of `outs` against `refs`, matched by position: the worst relative L2 error
    (‖out − ref‖ / ‖ref‖) and the worst max abs error over outputs whose shapes agree."""
    per: list[dict[str, Any]] = []
    notes: list[str] = []
    for k, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            notes.append(f"output {k}: shape {list(o.shape)} vs {list(r.shape)}, not compared")
            continue
        d = o - r
        nr = float(np.linalg.norm(r))
        nd = float(np.linalg.norm(d))
        per.append(
            {
                "output": k,
                "rel_l2_error": nd / nr if nr > 0 else nd,
                "max_abs_error": float(np.max(np.abs(d))) if d.size else 0.0,
                "finite": bool(np.isfinite(o).all()),
            }
        )
    if len(outs) != len(refs):
        notes.append(f"{len(outs)} outputs vs {len(refs)} in the baseline; compared by position")
    if not per:
        return {"rel_l2_error": None, "max_abs_error": None, "per_output": [], "notes": notes}
    return {
        "rel_l2_error": max(p["rel_l2_error"] for p in per),
        "max_abs_error": max(p["max_abs_error"] for p in per),
        "per_output": per,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- one peer
@dataclass
class Prepared:
    """A peer ready to be timed: `fn` runs one inference on pre-placed inputs."""

    name: str
    fn: Callable[[], Any]
    extra: dict[str, Any] = field(default_factory=dict)
    profile_fn: Callable[[], list[dict]] | None = None
    after: Callable[[BenchResult], None] | None = None  # fix-ups once timed
    cleanup: Callable[[], None] | None = None


class Skip(Exception):  # noqa: N818  (control flow, not an error)
    """A peer cannot run here; the message is the reason shown in the table."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:200]}" if s else type(e).__name__


def _call_style(module: Any, names: Sequence[str]) -> str:
    """ "kwargs" when forward() takes every input by name (or **kwargs), else "args"."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "args"
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return "kwargs"
    return "kwargs" if all(n in params for n in names) else "args"


def torch_inputs(
    feeds: Mapping[str, np.ndarray], device: str, dtype: Any = None, channels_last: bool = False
) -> dict[str, Any]:
    """Feeds as torch tensors on `device`; floating inputs cast to `dtype` when given, 4-D
    ones in channels_last when asked. Integer inputs (ids, masks) are never cast."""
    import torch  # noqa: PLC0415

    out = {}
    for k, a in feeds.items():
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        out[k] = t
    return out


def _module_fn(module: Any, tfeeds: dict[str, Any], order: Sequence[str]) -> Callable[[], Any]:
    import torch  # noqa: PLC0415

    style = _call_style(module, list(order))
    args = [tfeeds[k] for k in order]

    # the harness times from its own thread: inference mode is per thread, enter it per call
    if style == "kwargs":

        def fn() -> Any:
            with torch.inference_mode():
                return module(**tfeeds)

    else:

        def fn() -> Any:
            with torch.inference_mode():
                return module(*args)

    return fn


def _torch_copy(
    module: Any, feeds: Mapping[str, np.ndarray], device: str, fp16: bool
) -> tuple[Any, dict[str, Any], bool, dict[str, Any]]:
    """A copy of the module on `device` (FP16 and channels_last for 4-D image inputs when
    `fp16`), the feeds to match, whether channels_last is used, and the row's extra fields."""
    import torch  # noqa: PLC0415

    cl = fp16 and _is_image(feeds)
    m = copy.deepcopy(module).eval().to(device)
    if fp16:
        m = m.to(torch.float16)
    if cl:
        m = m.to(memory_format=torch.channels_last)
    tfeeds = torch_inputs(feeds, device, torch.float16 if fp16 else None, cl)
    extra = {
        "framework": f"PyTorch {torch.__version__}",
        "precision": "fp16" if fp16 else "fp32",
        "memory_format": "channels_last" if cl else "contiguous",
        # PyTorch's own defaults, recorded: FP32 convolutions may run in TF32 on Ampere+
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
    return m, tfeeds, cl, extra


def prepare_torch_eager(
    module: Any, feeds: Mapping[str, np.ndarray], device: str, fp16: bool = False
) -> Prepared:
    """PyTorch eager on `device`: a copy of the module in FP32, or in FP16 (channels_last
    for 4-D image inputs). The caller's module is never moved or cast."""
    m, tfeeds, cl, extra = _torch_copy(module, feeds, device, fp16)
    name = PEERS["torch-fp16" if fp16 else "torch-fp32"] + (" channels_last" if cl else "")
    return Prepared(name, _module_fn(m, tfeeds, list(feeds)), extra)


def prepare_torch_compile(
    module: Any,
    feeds: Mapping[str, np.ndarray],
    device: str,
    fp16: bool = False,
    mode: str | None = None,
) -> Prepared:
    """torch.compile of the module (FP32, or FP16 as in eager): by default mode "default" for
    transformers, "max-autotune-no-cudagraphs" for CNNs (4-D image input). The first call
    compiles; its time is recorded as compile_time_s. A failure to compile becomes Skip.
    A mode with CUDA graphs ("max-autotune") marks a new step before each call: the caller
    drops each call's outputs, which the next replay overwrites."""
    import torch  # noqa: PLC0415

    m, tfeeds, cl, extra = _torch_copy(module, feeds, device, fp16)
    if mode is None:
        mode = COMPILE_MODE_CNN if _is_image(feeds) else COMPILE_MODE_TRANSFORMER

    def cleanup() -> None:
        try:
            torch._dynamo.reset()  # drop the compiled graphs and their memory
        except Exception:  # noqa: BLE001
            pass

    t0 = time.perf_counter()
    try:
        compiled = torch.compile(m, mode=mode)
        fn = _module_fn(compiled, tfeeds, list(feeds))
        if mode == COMPILE_MODE_MAX:
            inner = fn

            def fn() -> Any:
                torch.compiler.cudagraph_mark_step_begin()
                return inner()

        fn()  # compiles (lazily, on the first call)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        cleanup()
        raise Skip(f"torch.compile failed: {_first_line(e)}") from e
    compile_s = time.perf_counter() - t0
    name = PEERS["torch-compile-fp16" if fp16 else "torch-compile"]  # (+ the mode, below)
    name += (" channels_last" if cl else "") + f" ({mode})"
    extra.update(compile_mode=mode, compile_time_s=compile_s)
    return Prepared(name, fn, extra, cleanup=cleanup)


def prepare_onnxruntime(model_path: str, feeds: Mapping[str, np.ndarray], device: str) -> Prepared:
    """onnxruntime FP32: CPUExecutionProvider on a CPU run; on a GPU run the
    CUDAExecutionProvider with inputs and outputs bound on the GPU (I/O binding), or Skip when
    it is not available: a CPU run would not be on the same device as the other peers."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install onnxruntime)") from None
    cuda = device.startswith("cuda")
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(
            "CUDAExecutionProvider not available (pip install onnxruntime-gpu); onnxruntime on "
            "the CPU would not run on the same device as the other peers"
        )
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(model_path), providers=providers)
    except Exception as e:  # noqa: BLE001
        raise Skip(f"onnxruntime could not load the model: {_first_line(e)}") from e
    if sess.get_providers()[0] != providers[0]:
        raise Skip(f"onnxruntime fell back to {sess.get_providers()[0]} (is CUDA/cuDNN installed?)")
    names = [o.name for o in sess.get_outputs()]
    ep = "CUDA EP" if cuda else "CPU EP"
    extra = {
        "framework": f"onnxruntime {ort.__version__}",
        "precision": "fp32",
        "execution_provider": providers[0],
    }
    if not cuda:
        arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        return Prepared(f"{PEERS['onnxruntime']} ({ep})", lambda: sess.run(names, arrays), extra)

    binding = sess.io_binding()
    dev_id = int(device.split(":")[1]) if ":" in device else 0
    keep = []
    for k, v in feeds.items():
        ov = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", dev_id)
        keep.append(ov)
        binding.bind_ortvalue_input(k, ov)
    for n in names:
        binding.bind_output(n, "cuda", dev_id)

    def fn() -> Any:
        sess.run_with_iobinding(binding)  # synchronises onnxruntime's own CUDA stream
        return binding

    def after(r: BenchResult) -> None:
        # CUDA events on torch's stream cannot see onnxruntime's stream
        r.gpu_compute = None
        r.warnings.append(
            "onnxruntime runs on its own CUDA stream: no GPU compute time; its latency is the "
            "synchronous call"
        )

    p = Prepared(f"{PEERS['onnxruntime']} ({ep})", fn, extra, after=after)
    p.extra["_outputs"] = lambda: binding.copy_outputs_to_cpu()
    return p


def prepare_ecoinfer(
    model_path: str,
    feeds: Mapping[str, np.ndarray],
    device: str,
    graph: Any = None,
    opt_level: int = 2,
) -> Prepared:
    """The ecoinfer reference runtime in FP32 (node by node with torch kernels) on the graph
    optimized at `opt_level` (0 = as imported); if the optimizer fails, the imported graph
    runs and the row says so."""
    from ecoinfer.api import Model  # noqa: PLC0415
    from ecoinfer.bench.harness import layer_table  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    g = graph if graph is not None else import_onnx(model_path)
    warn = None
    level = opt_level
    if opt_level > 0:
        from ecoinfer.passes import OptimizeConfig, optimize  # noqa: PLC0415

        try:
            g, _ = optimize(g, OptimizeConfig(level=opt_level))
        except Exception as e:  # noqa: BLE001  (the unoptimized graph is still a fair peer)
            warn = f"optimizer level {opt_level} failed ({_first_line(e)}); ran the imported graph"
            level = 0
    model = Model(g, str(model_path))
    tfeeds = torch_inputs(feeds, device)

    def fn() -> Any:
        return model.run(tfeeds, device=device, as_torch=True)

    def profile_fn() -> list[dict]:
        times: dict[str, list[float]] = {}
        for _ in range(5):
            model.run(tfeeds, device=device, as_torch=True, profile=times)
        return layer_table(times, {n.name: n.op_type for n in g.nodes})

    extra = {"framework": "ecoinfer reference runtime", "precision": "fp32", "opt_level": level}

    def after(r: BenchResult) -> None:
        if warn:
            r.warnings.append(warn)

    name = f"{PEERS['ecoinfer-fp32']} (level {level})"
    return Prepared(name, fn, extra, profile_fn=profile_fn, after=after)


PRECISION_LABEL = {"float16": "FP16", "bfloat16": "BF16", "float32": "FP32", "tf32": "TF32"}


def quantization_summary(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What an engine's build report says of its quantization, in counts (None: float)."""
    q = (report or {}).get("quantization")
    if not q:
        return None
    return {
        k: q.get(k) for k in ("precision", "calibrator", "smooth_alpha", "emulated") if k in q
    } | {
        "quantized_layers": len(q.get("quantized_layers", [])),
        "float_layers": len(q.get("float_layers", [])),
    }


def engine_precision_label(engine: Any) -> str:
    """An engine's precision for a results row: "FP8 + FP16" where quantized layers run 8-bit
    kernels next to FP16 ones, "FP16 (FP8 asked: no layer runs in it)" where every quantized
    layer ended up on its float twin (build reports without that count: as asked)."""
    label = PRECISION_LABEL.get(engine.precision, engine.precision)
    q = (engine.report or {}).get("quantization") or {}
    if not q:
        return label
    asked = str(q.get("precision", "")).upper()
    if q.get("eight_bit") == 0 and q.get("emulated"):
        return f"{asked} (emulated on float kernels) + {label}"
    if q.get("eight_bit") == 0:
        return f"{label} ({asked} asked: no layer runs in it)"
    return f"{asked} + {label}"


def _engine_peer(
    engine: Any, feeds: Mapping[str, np.ndarray], source: str, label: str, extra: dict[str, Any]
) -> Prepared:
    """Run `engine` (CUDA graphs where it can) on `feeds`: the Prepared of an engine row, its
    extra completed with the tactic counts and what is common to every engine row."""
    from ecoinfer.api import validate_inputs  # noqa: PLC0415
    from ecoinfer.engine.builder import lowered_io_feeds  # noqa: PLC0415

    ctx = engine.create_context()
    # a --lowered-io engine takes float16 where the model takes float32: its feeds are cast
    # once, here, as the PyTorch FP16 peers' are (torch_inputs), not inside the timed call
    lowered = (engine.report or {}).get("lowered_io") or {}
    feeds = lowered_io_feeds(engine, dict(feeds))
    tensors = {
        k: v.to(engine.device) for k, v in validate_inputs(engine.graph, feeds, source).items()
    }
    ctx._check(tensors)  # a shape outside the engine's profiles: a clear error before timing
    tactics: dict[str, int] = {}
    for row in engine.layer_table():
        tactics[row["tactic"]] = tactics.get(row["tactic"], 0) + 1
    extra = {
        "framework": "ecoinfer engine",
        "precision": engine.precision,
        **extra,
        "cuda_graphs": ctx.use_graphs,
        "tactics": tactics,
        "layers": len(engine.graph.nodes),
    }
    if lowered:
        extra["lowered_io"] = lowered

    def after(r: BenchResult) -> None:
        r.warnings.extend(engine.warnings)
        r.extra["cuda_graph_replays"] = ctx.graph_replays

    return Prepared(
        f"{PEERS['ecoinfer-engine']} {label}"
        + (" + fp16 IO" if lowered else "")
        + (" + CUDA graphs" if ctx.use_graphs else ""),
        lambda: ctx.run(tensors, as_torch=True),
        extra,
        after=after,
    )


def prepare_ecoinfer_engine(
    path: str,
    feeds: Mapping[str, np.ndarray],
    device: str,
    level: int | None = None,
    precision: str | None = None,
) -> Prepared:
    """Build an engine for exactly these input shapes (FP16 on a GPU, FP32 on a CPU), tuned on
    this device, and run it with CUDA graphs where it can."""
    from ecoinfer.engine.builder import BuildConfig, build  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

    cuda = device.startswith("cuda")
    prec = precision or ("float16" if cuda else "float32")
    shapes = {k: tuple(np.asarray(v).shape) for k, v in feeds.items()}
    t0 = time.perf_counter()
    try:
        engine = build(
            path,
            BuildConfig(
                precision=prec,
                device=device,
                opt_level=level,
                profiles=[ShapeProfile(shapes, shapes, shapes)],
            ),
        )
    except EcoinferError as e:
        raise Skip(f"engine build failed: {e}") from None
    build_s = time.perf_counter() - t0
    return _engine_peer(engine, feeds, path, PRECISION_LABEL[prec], {"build_seconds": build_s})


def _other_model(engine_graph: Any, graph: Any) -> str | None:
    """Why an engine was built from another model than the one compared (None: it may be the
    same): outputs of other names, or fixed dims that differ (a MiniLM engine's 384 against
    BERT-base's 768), which would otherwise make a row of another model's throughput."""
    mine = {v.name: v.shape for v in engine_graph.outputs}
    theirs = {v.name: v.shape for v in graph.outputs}
    if set(mine) != set(theirs):
        return f"its outputs {sorted(mine)} are not the model's {sorted(theirs)}"
    for name, shape in mine.items():
        other = theirs[name]
        if shape is None or other is None:
            continue
        fixed = [(a, b) for a, b in zip(shape, other) if isinstance(a, int) and isinstance(b, int)]
        if len(shape) != len(other) or any(a != b for a, b in fixed):
            return f"its output '{name}' is {list(shape)}, the model's {list(other)}"
    return None


def prepare_engine_file(
    engine_path: str, feeds: Mapping[str, np.ndarray], device: str, graph: Any = None
) -> Prepared:
    """A built engine file as a peer (e.g. an INT8 or FP8 engine next to the FP16 one); its
    label says its precision and quantization, its extra the tactics and quantized layers.
    An engine of another model than `graph` is skipped."""
    from ecoinfer.engine.builder import load_engine  # noqa: PLC0415

    engine = load_engine(engine_path, device)
    why = _other_model(engine.graph, graph) if graph is not None else None
    if why:
        raise Skip(f"{engine_path} was built from another model: {why}")
    label = engine_precision_label(engine)
    extra: dict[str, Any] = {"engine_file": engine_path}
    quant = quantization_summary(engine.report)
    if quant:
        extra["quantization"] = quant
    return _engine_peer(engine, feeds, engine_path, f"{label} ({Path(engine_path).name})", extra)


# ---------------------------------------------------------------------------- compare
def _versions() -> dict[str, str | None]:
    import torch  # noqa: PLC0415

    from ecoinfer import __version__  # noqa: PLC0415

    v: dict[str, str | None] = {
        "ecoinfer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host_cpu": device_name("cpu"),
    }
    for mod in ("onnxruntime", "transformers"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
        try:
            import pynvml  # noqa: PLC0415

            pynvml.nvmlInit()
            drv = pynvml.nvmlSystemGetDriverVersion()
            v["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
        except Exception:  # noqa: BLE001
            v["driver"] = None
    return v


# asked for by name only: minutes of autotuning on the GPU
NOT_BY_DEFAULT = ("torch-compile-max-fp16",)


def parse_peers(spec: str | Sequence[str] | None) -> list[str]:
    """ "torch-fp32,onnxruntime" (or a list) -> keys, validated; None -> every peer but
    NOT_BY_DEFAULT."""
    if spec is None:
        return [k for k in PEERS if k not in NOT_BY_DEFAULT]
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    keys = [s.strip() for s in items if s.strip()]
    alias = {"ecoinfer": "ecoinfer-fp32", "ort": "onnxruntime", "torch": "torch-fp32"}
    out, files = [], []
    for k in keys:
        k = alias.get(k, k)
        if k.startswith(ENGINE_FILE):  # a built engine file (INT8/FP8 ones, say): runs last
            f = k[len(ENGINE_FILE) :]
            if not Path(f).is_file():
                raise InputError(f"--peers {k}: no engine file {f}; build it with ecoinfer build")
            if k not in files:
                files.append(k)
            continue
        if k not in PEERS:
            raise InputError(
                f"--peers {k}: unknown peer; choose from {', '.join(PEERS)} or engine:FILE.eng"
            )
        if k not in out:
            out.append(k)
    return sorted(out, key=list(PEERS).index) + files


def _idle_power_w(dev: str, cfg: BenchConfig) -> float | None:
    from ecoinfer.energy import open_meter  # noqa: PLC0415
    from ecoinfer.errors import EnergyMeterError  # noqa: PLC0415

    try:
        meter = open_meter(
            "cuda" if dev.startswith("cuda") else "cpu", declared_power_w=cfg.declared_power_w
        )
        return meter.idle_power_w(2.0)
    except EnergyMeterError:
        return None


def compare(
    model_path: str | os.PathLike,
    module: Any = None,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    batch: int = 1,
    seq: int = 128,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    device: str = "auto",
    peers: str | Sequence[str] | None = None,
    config: BenchConfig | None = None,
    seed: int = 0,
    opt_level: int = 2,
    no_module_reason: str = NO_MODULE,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Benchmark every peer on the same inputs and device; see the module docstring.

    feeds: the inputs (numpy, by ONNX input name); default random inputs of `batch` x `seq`
    (or `shapes`) from ecoinfer.commands.common.random_inputs with `seed`.
    opt_level: ecoinfer's graph optimization level for its FP32 peer (0 = as imported).
    """
    import torch  # noqa: PLC0415

    from ecoinfer.commands.common import random_inputs  # noqa: PLC0415
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    cfg = config or BenchConfig()
    say = log or (lambda s: None)
    dev = pick_device(device)
    keys = parse_peers(peers)
    path = str(model_path)
    graph = import_onnx(path)
    if feeds is None:
        feeds = random_inputs(graph, input_shapes(graph, batch, seq, shapes), seed)
    else:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        first = graph.inputs[0].name if graph.inputs else None
        if first in feeds and feeds[first].ndim > 0:
            batch = int(feeds[first].shape[0])
    comp = Comparison(
        model=path,
        device=dev,
        device_name=device_name(dev),
        batch=batch,
        inputs={k: _fmt_input(v) for k, v in feeds.items()},
        baseline=None,
        results=[],
        config=cfg,
        environment=_versions(),
    )
    cuda = dev.startswith("cuda")
    outputs: dict[str, list[np.ndarray]] = {}
    if cfg.measure_energy and cfg.idle_power_w is None:
        # idle power once, before any peer runs: measured between peers it still carries the
        # previous peer's heat and the driver's ~1 s power averaging
        cfg = dataclasses.replace(cfg, idle_power_w=_idle_power_w(dev, cfg))

    for i, key in enumerate(keys, 1):
        label = PEERS.get(key, key)
        say(f"[{i}/{len(keys)}] {label}")
        prep: Prepared | None = None
        try:
            prep = _prepare(key, path, graph, module, feeds, dev, cuda, no_module_reason, opt_level)
            outputs[key] = _first_outputs(prep, cuda)
            res = run_benchmark(prep.name, prep.fn, batch, cfg, dev, profile_fn=prep.profile_fn)
            if prep.after is not None:
                prep.after(res)
            res.extra.update(prep.extra)
        except Skip as e:
            res = BenchResult.skip(prep.name if prep else label, comp.device_name, batch, str(e))
        except EcoinferError as e:
            res = BenchResult.skip(prep.name if prep else label, comp.device_name, batch, str(e))
        except Exception as e:  # noqa: BLE001  (a peer that breaks is skipped, never fatal)
            res = BenchResult.skip(
                prep.name if prep else label, comp.device_name, batch, f"failed: {_first_line(e)}"
            )
        finally:
            if prep is not None and prep.cleanup is not None:
                prep.cleanup()
            prep = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        res.extra["peer"] = key
        res.extra["device_kind"] = "cuda" if cuda else "cpu"
        comp.results.append(res)
        if res.skipped:
            say(f"      skipped: {res.skipped}")

    base_key = next(
        (k for k in ("torch-fp32", "ecoinfer-fp32") if k in outputs and _ran(comp, k)), None
    )
    if base_key is not None:
        base = comp.result(base_key)
        assert base is not None
        comp.baseline = base.name
        _attach_errors(comp, outputs, outputs[base_key], base.name)
        for r in comp.results:
            if not r.skipped and base.j_per_inference and r.j_per_inference is not None:
                r.extra["energy_vs_baseline"] = r.j_per_inference / base.j_per_inference
        # torch vs ONNX: a large error means the module and the file differ (weights, model)
        eco = comp.result("ecoinfer-fp32")
        if base_key == "torch-fp32" and eco is not None and not eco.skipped:
            e = eco.extra.get("rel_l2_error")
            if e is not None and e > SAME_MODEL_REL_ERROR:
                comp.warnings.append(
                    f"the torch module and {Path(path).name} disagree (relative error {e:.2g} "
                    "of ecoinfer fp32 vs PyTorch eager FP32): are they the same model and "
                    "weights? Errors vs FP32 mix two models."
                )
        return comp
    # no FP32 row was timed: the errors still come from FP32 outputs, computed once untimed
    # (accuracy belongs next to every speed figure; the timing is what costs the run time)
    refs = _untimed_fp32_outputs(module, feeds, dev) if module is not None and outputs else None
    if refs is not None:
        _attach_errors(comp, outputs, refs, UNTIMED_FP32)
        comp.warnings.append(
            "no FP32 baseline was timed (PyTorch eager FP32 or ecoinfer fp32): no energy ratio "
            f"column; errors are against {UNTIMED_FP32}"
        )
    else:
        comp.warnings.append(
            "no FP32 baseline ran (PyTorch eager FP32 or ecoinfer fp32): no energy ratio or "
            "error column"
        )
    return comp


UNTIMED_FP32 = "PyTorch eager FP32 outputs (one untimed call)"


def _untimed_fp32_outputs(
    module: Any, feeds: Mapping[str, np.ndarray], device: str
) -> list[np.ndarray] | None:
    """One call of the module in FP32 on the device, as the PyTorch eager FP32 peer runs it;
    None when it cannot run (the error column is then left out, with the warning)."""
    prep: Prepared | None = None
    try:
        prep = prepare_torch_eager(module, feeds, device)
        return _first_outputs(prep, device.startswith("cuda"))
    except Exception:  # noqa: BLE001  (no reference: the comparison still stands)
        return None
    finally:
        if prep is not None and prep.cleanup is not None:
            prep.cleanup()
        gc.collect()


def _first_outputs(prep: Prepared, cuda: bool) -> list[np.ndarray]:
    """A prepared peer's outputs from one call, as float64 arrays (the device copies are
    dropped on return, before anything is timed)."""
    import torch  # noqa: PLC0415

    out = prep.extra.pop("_outputs", None)
    first = prep.fn()
    if cuda:
        torch.cuda.synchronize()
    return [_to_f64(o) for o in (out() if out is not None else flatten_outputs(first))]


def _attach_errors(
    comp: Comparison, outputs: dict[str, list[np.ndarray]], refs: list[np.ndarray], ref_name: str
) -> None:
    """Each row's error against the FP32 reference outputs (relative L2 and max abs)."""
    for r in comp.results:
        k = r.extra["peer"]
        if r.skipped or k not in outputs:
            continue
        err = output_errors(outputs[k], refs)
        r.extra["error_reference"] = ref_name
        r.extra["rel_l2_error"] = err["rel_l2_error"]
        r.extra["max_abs_error"] = err["max_abs_error"]
        r.extra["errors_per_output"] = err["per_output"]
        if err["notes"]:
            r.extra["error_notes"] = err["notes"]
        if not all(p["finite"] for p in err["per_output"]):
            r.warnings.append("non-finite values in the outputs")


def _ran(comp: Comparison, key: str) -> bool:
    r = comp.result(key)
    return r is not None and not r.skipped


def _prepare(
    key: str,
    path: str,
    graph: Any,
    module: Any,
    feeds: Mapping[str, np.ndarray],
    device: str,
    cuda: bool,
    no_module_reason: str,
    opt_level: int = 2,
) -> Prepared:
    if key in TORCH_PEERS:
        if module is None:
            raise Skip(no_module_reason)
        if key == "torch-fp32":
            return prepare_torch_eager(module, feeds, device)
        if not cuda:
            what = "eager FP16" if key == "torch-fp16" else "torch.compile"
            raise Skip(
                f"{what} is measured on CUDA only; this is a CPU-only run"
                + (
                    " (CPU FP16 kernels are slow emulation, no serving setup uses them)"
                    if key == "torch-fp16"
                    else ""
                )
            )
        if key == "torch-fp16":
            return prepare_torch_eager(module, feeds, device, fp16=True)
        if key == "torch-compile-max-fp16":
            return prepare_torch_compile(module, feeds, device, True, COMPILE_MODE_MAX)
        return prepare_torch_compile(module, feeds, device, fp16=key == "torch-compile-fp16")
    if key == "onnxruntime":
        return prepare_onnxruntime(path, feeds, device)
    if key == "ecoinfer-fp32":
        return prepare_ecoinfer(path, feeds, device, graph, opt_level)
    if key == "ecoinfer-engine":
        return prepare_ecoinfer_engine(path, feeds, device)  # the builder's level for the device
    if key.startswith(ENGINE_FILE):
        return prepare_engine_file(key[len(ENGINE_FILE) :], feeds, device, graph)
    raise Skip(f"unknown peer {key}")
