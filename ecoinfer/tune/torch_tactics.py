"""Tactics built on torch library calls (cuBLAS/cuBLASLt, cuDNN, SDPA, fused norms).

Each computes exactly its op's semantics (docs/fused-ops.md); make() returns None where a
library call cannot. The autotuner still checks every one against the reference kernel.

    ecoinfer.FusedGemm   cublas_addmm / addmm (CPU)   torch.addmm on a 2-D view of A, B as stored
                         linear                       F.linear on an [N, K] weight packed at make()
                         cublaslt_bias_act            torch._addmm_activation: the cuBLASLt
                                                      bias+ReLU/GELU(tanh) epilogue (also for
                                                      exact GELU in FP16/BF16 layers)
    ecoinfer.FusedConv   cudnn / conv (CPU)           F.conv*d + epilogue, in the node's layout
                         cudnn_channels_last /        NCHW node run channels-last (weight converted
                         conv_channels_last (CPU)     once at make(), input per call)
                         cudnn_fused_relu             aten.cudnn_convolution_relu / _add_relu
                         cudnn_pad_channels           C_in < 32 not a multiple of 8 (an RGB stem):
                                                      zero channels added, run channels-last
                         cublas_1x1 / addmm_1x1 (CPU) NHWC 1x1 stride-1 conv as addmm (cuBLASLt
                                                      bias+ReLU epilogue on CUDA)
                         cudnn_space_to_depth         stride-2 conv on <= 4 channels (an RGB stem)
                                                      as a stride-1 conv on 2x2 blocks
    ecoinfer.Attention   sdpa_flash, sdpa_efficient,  F.scaled_dot_product_attention restricted to
    ecoinfer.MultiHead-  sdpa_cudnn, sdpa_math        one backend (torch.nn.attention.sdpa_kernel)
    Attention
    LayerNormalization   torch_layer_norm             F.layer_norm
    RMSNormalization     torch_rms_norm               F.rms_norm (torch >= 2.4)

FP32 on CUDA: "float32" layers run with TF32 off (cuDNN allows it by default), "tf32" layers with
TF32 on for matmuls and convolutions; the flags are restored after each call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ecoinfer.ir.graph import Node, optional_input
from ecoinfer.ir.ops.fused_conv import to_first, to_last
from ecoinfer.ir.ops.nn import window_params
from ecoinfer.kernels.broadcast import broadcast_shape
from ecoinfer.kernels.torch_flags import FLAGS_LOCK, pinned
from ecoinfer.kernels.torch_ops.activation import apply_activation
from ecoinfer.kernels.torch_ops.nn import _torch_pads
from ecoinfer.tune.tactics import BuildInfo, RunFn, TensorInfo, tactic

Tensor = torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_CUDA_DT = ("float32", "float16", "bfloat16")
_CPU_DT = ("float32", "bfloat16")  # CPU half convolutions/GEMMs are slow or missing
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# cudnn_pad_channels: convs reading this few input channels (an RGB stem) get zero channels up
# to a multiple of 8, the granule of cuDNN's channels-last tensor-core kernels
_PAD_C_MAX = 32

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: no SDPA tactics
    SDPBackend = None  # type: ignore[assignment,misc]
    sdpa_kernel = None  # type: ignore[assignment]

_HAS_CUDNN_RELU = hasattr(torch.ops.aten, "cudnn_convolution_relu")
_HAS_CUDNN_ADD_RELU = hasattr(torch.ops.aten, "cudnn_convolution_add_relu")
_HAS_ADDMM_ACT = hasattr(torch, "_addmm_activation")
_HAS_RMS_NORM = hasattr(F, "rms_norm")

# process-wide torch flags (TF32, cuDNN benchmark, SDPA backend) are set per call under
# this lock (kernels/torch_flags.py)
_FLAGS = FLAGS_LOCK


# ---------------------------------------------------------------------- common helpers


def _weight(node: Node, i: int, inputs: list[TensorInfo | None], build: BuildInfo) -> Tensor | None:
    """Input i's constant value on the device in its compute dtype, if it is a weight."""
    info = optional_input(inputs, i)
    if info is None or not info.is_weight or i >= len(node.inputs):
        return None
    w = build.weights.get(node.inputs[i])
    if w is None or tuple(w.shape) != tuple(info.shape):
        return None
    return w.to(device=build.device, dtype=info.dtype)


def _pinned(run: RunFn, flags: list[tuple[Any, str, bool]]) -> RunFn:
    """run with each (module, attribute) torch flag set to its value for the call."""

    def wrapped(xs: list[Tensor | None]) -> list[Tensor]:
        with pinned(flags):
            return run(xs)

    return wrapped


def _with_precision(run: RunFn, build: BuildInfo) -> RunFn:
    """Pin TF32 on/off around each call for FP32 layers on CUDA (no-op elsewhere)."""
    if torch.device(build.device).type != "cuda" or build.precision not in ("float32", "tf32"):
        return run
    on = build.precision == "tf32"
    mm, cd = torch.backends.cuda.matmul, torch.backends.cudnn
    return _pinned(run, [(mm, "allow_tf32", on), (cd, "allow_tf32", on)])


def act_inplace(y: Tensor, name: str, params: list[float]) -> Tensor:
    """apply_activation on a tensor we own: in place where torch has the op."""
    if not name:
        return y
    p = list(params)
    if name == "Relu":
        return y.relu_()
    if name == "Sigmoid":
        return y.sigmoid_()
    if name == "Tanh":
        return y.tanh_()
    if name == "Gelu":
        return torch.ops.aten.gelu_(y, approximate="tanh" if p and p[0] else "none")
    if name == "LeakyRelu":
        return F.leaky_relu_(y, p[0] if p else 0.01)
    if name == "Elu":
        return F.elu_(y, p[0] if p else 1.0)
    if name == "Clip":
        lo = p[0] if len(p) > 0 and not math.isnan(p[0]) else None
        hi = p[1] if len(p) > 1 and not math.isnan(p[1]) else None
        return y if lo is None and hi is None else y.clamp_(lo, hi)
    if name == "HardSigmoid":
        alpha, beta = (p + [0.2, 0.5][len(p) :])[:2]
        return y.mul_(alpha).add_(beta).clamp_(0.0, 1.0)
    if name == "Swish" and (not p or p[0] == 1.0):
        return F.silu(y, inplace=True)
    return apply_activation(y, name, p)


def _add_residual(y: Tensor, res: Tensor) -> Tensor:
    if res.dim() <= y.dim() and broadcast_shape(res.shape, y.shape) == y.shape:
        return y.add_(res)
    return y + res


def _float_inputs(inputs: list[TensorInfo | None], *idx: int) -> torch.dtype | None:
    """The common float dtype of the given (present) inputs, None if they differ."""
    dts = {x.dtype for i in idx if (x := optional_input(inputs, i)) is not None}
    if len(dts) != 1:
        return None
    dt = dts.pop()
    return dt if dt in _FLOATS else None


# ---------------------------------------------------------------------- FusedGemm
@dataclass(frozen=True)
class _Gemm:
    trans_b: bool
    act: str
    params: list[float]
    k: int
    n: int


def _gemm_parse(attrs: dict[str, Any], inputs: list[TensorInfo | None]) -> _Gemm | None:
    a, b, bias = optional_input(inputs, 0), optional_input(inputs, 1), optional_input(inputs, 2)
    if a is None or b is None or len(b.shape) != 2 or len(a.shape) < 1:
        return None
    if _float_inputs(inputs, 0, 1, 2, 3) is None:
        return None
    tb = bool(int(attrs.get("trans_b", 0) or 0))
    k, n = (b.shape[1], b.shape[0]) if tb else (b.shape[0], b.shape[1])
    if a.shape[-1] != k or (bias is not None and tuple(bias.shape) != (n,)):
        return None
    act = str(attrs.get("activation") or "")
    return _Gemm(tb, act, [float(v) for v in attrs.get("activation_params") or []], k, n)


def _make_addmm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """torch.addmm(bias, A2d, B) with B read as stored (a transposed view when trans_b)."""
    g = _gemm_parse(attrs, inputs)
    if g is None:
        return None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b = xs[0], xs[1]
        bias = xs[2] if len(xs) > 2 else None
        res = xs[3] if len(xs) > 3 else None
        assert a is not None and b is not None
        bk = b.t() if g.trans_b else b
        lead = a.shape[:-1]
        a2 = a.reshape(-1, g.k)
        y = torch.addmm(bias, a2, bk) if bias is not None else torch.mm(a2, bk)
        y = act_inplace(y.reshape(*lead, g.n), g.act, g.params)
        return [_add_residual(y, res) if res is not None else y]

    return _with_precision(run, build)


def _make_linear(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """F.linear on the weight as [N, K] contiguous (nn.Linear's layout), packed once here."""
    g = _gemm_parse(attrs, inputs)
    if g is None:
        return None
    w = _weight(node, 1, inputs, build)
    # a constant B stored [K, N] is transposed once; an [N, K] one (trans_b) is used as given
    packed = w.t().contiguous() if w is not None and not g.trans_b else None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b = xs[0], xs[1]
        bias = xs[2] if len(xs) > 2 else None
        res = xs[3] if len(xs) > 3 else None
        assert a is not None and b is not None
        wt = packed if packed is not None else (b if g.trans_b else b.t())
        y = act_inplace(F.linear(a, wt, bias), g.act, g.params)
        return [_add_residual(y, res) if res is not None else y]

    return _with_precision(run, build)


def _make_addmm_act(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """torch._addmm_activation: bias + ReLU/GELU in the cuBLASLt epilogue. CUDA's GELU epilogue
    is the tanh approximation: exact (erf) Gelu nodes take it only in FP16/BF16 layers, where
    its largest deviation (4.7e-4 absolute, at x = 2.7) is below half the format's unit in the
    last place there; the tuner's tolerance check applies to it as to every tactic."""
    g = _gemm_parse(attrs, inputs)
    if g is None or optional_input(inputs, 2) is None:
        return None
    if g.act == "Relu":
        gelu = False
    elif g.act == "Gelu" and g.params and g.params[0]:
        gelu = True
    elif g.act == "Gelu" and build.precision in ("float16", "bfloat16"):
        gelu = True  # erf GELU as the tanh formula: the half-precision approximation above
    else:
        return None

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        a, b, bias = xs[0], xs[1], xs[2]
        res = xs[3] if len(xs) > 3 else None
        assert a is not None and b is not None and bias is not None
        lead = a.shape[:-1]
        bk = b.t() if g.trans_b else b
        y = torch._addmm_activation(bias, a.reshape(-1, g.k), bk, use_gelu=gelu)
        y = y.reshape(*lead, g.n)
        return [_add_residual(y, res) if res is not None else y]

    return _with_precision(run, build)


tactic("FusedGemm", "cublas_addmm", "ecoinfer", ("cuda",), _CUDA_DT)(_make_addmm)
tactic("FusedGemm", "addmm", "ecoinfer", ("cpu",), _CPU_DT)(_make_addmm)
tactic("FusedGemm", "linear", "ecoinfer", ("cpu", "cuda"), _CUDA_DT)(_make_linear)
if _HAS_ADDMM_ACT:
    tactic("FusedGemm", "cublaslt_bias_act", "ecoinfer", ("cuda",), _CUDA_DT)(_make_addmm_act)


# ---------------------------------------------------------------------- FusedConv
@dataclass(frozen=True)
class _Conv:
    nd: int
    nhwc: bool
    strides: list[int]
    dil: list[int]
    pads: list[int]  # symmetric begins after an explicit F.pad
    pre_pad: list[int] | None  # F.pad amounts when the node's pads are asymmetric
    group: int
    act: str
    params: list[float]
    post: str
    post_params: list[float]
    out_shape: tuple[int, ...]  # NC(spatial) order


def _conv_parse(attrs: dict[str, Any], inputs: list[TensorInfo | None]) -> _Conv | None:
    x, w = optional_input(inputs, 0), optional_input(inputs, 1)
    if x is None or w is None or len(x.shape) != len(w.shape) or len(x.shape) < 3:
        return None
    if _float_inputs(inputs, 0, 1, 2, 3) is None:
        return None
    rank = len(x.shape)
    nd = rank - 2
    if nd not in _CONV:
        return None
    nhwc = attrs.get("layout") == "NHWC"
    xs = [x.shape[i] for i in to_first(rank)] if nhwc else list(x.shape)
    ws = [w.shape[i] for i in to_first(rank)] if nhwc else list(w.shape)
    try:
        strides, dil, pads, _ = window_params(attrs, nd, ws[2:])
    except ValueError:
        return None
    begins, ends = pads[:nd], pads[nd:]
    pre = None if begins == ends else _torch_pads(begins, ends)
    sym = begins if begins == ends else [0] * nd
    spatial = []
    for i in range(nd):
        eff = (ws[2 + i] - 1) * dil[i] + 1
        spatial.append((xs[2 + i] + begins[i] + ends[i] - eff) // strides[i] + 1)
    return _Conv(
        nd,
        nhwc,
        strides,
        dil,
        sym,
        pre,
        int(attrs.get("group", 1) or 1),
        str(attrs.get("activation") or ""),
        [float(v) for v in attrs.get("activation_params") or []],
        str(attrs.get("post_activation") or ""),
        [float(v) for v in attrs.get("post_activation_params") or []],
        (xs[0], ws[0], *spatial),
    )


def _conv_maker(variant: str) -> Callable[..., RunFn | None]:
    """variant: "plain" (the node's layout), "channels_last" (NCHW node run NHWC inside),
    "fused" (cuDNN's conv+bias+ReLU / conv+bias+add+ReLU entry points)."""

    def make(
        node: Node,
        attrs: dict[str, Any],
        inputs: list[TensorInfo | None],
        cfg: dict,
        build: BuildInfo,
    ) -> RunFn | None:
        c = _conv_parse(attrs, inputs)
        if c is None:
            return None
        rank = c.nd + 2
        z_info = optional_input(inputs, 3)
        if variant == "channels_last" and (c.nhwc or c.nd != 2):
            return None  # an NHWC node already runs channels-last in the plain variant
        fused = ""
        if variant == "fused":
            if c.nd != 2:
                return None
            if c.act == "Relu" and z_info is None and not c.post and _HAS_CUDNN_RELU:
                fused = "relu"
            elif not c.act and z_info is not None and c.post == "Relu" and _HAS_CUDNN_ADD_RELU:
                zs = tuple(z_info.shape[i] for i in to_first(rank)) if c.nhwc else z_info.shape
                if tuple(zs) != c.out_shape:
                    return None  # the fused entry point does not broadcast Z
                fused = "add_relu"
            else:
                return None
        conv = _CONV[c.nd]
        w_cl = None
        if variant == "channels_last":
            w = _weight(node, 1, inputs, build)
            w_cl = w.contiguous(memory_format=torch.channels_last) if w is not None else None
        pad_c = 0  # "pad_channels": zero input channels added up to a multiple of 8
        if variant == "pad_channels":
            w = _weight(node, 1, inputs, build)
            cin = int(w.shape[-1] if c.nhwc else w.shape[1]) if w is not None else 0
            if w is None or c.nd != 2 or c.group != 1 or cin % 8 == 0 or cin > _PAD_C_MAX:
                return None
            pad_c = -cin % 8
            # zero weights for the zero channels: the sum is unchanged; stored channels-last
            if c.nhwc:
                w_cl = F.pad(w, (0, pad_c)).permute(to_first(rank))
            else:
                w_cl = F.pad(w, (0, 0, 0, 0, 0, pad_c)).contiguous(
                    memory_format=torch.channels_last
                )

        def run(xs: list[Tensor | None]) -> list[Tensor]:
            x, w = xs[0], xs[1]
            b = xs[2] if len(xs) > 2 else None
            z = xs[3] if len(xs) > 3 else None
            assert x is not None and w is not None
            if pad_c:
                x = F.pad(x, (0, pad_c) if c.nhwc else (0, 0, 0, 0, 0, pad_c))
            if c.nhwc:
                # channels-last views of the NHWC tensors: what cuDNN wants, no copy
                x = x.permute(to_first(rank))
                w = w.permute(to_first(rank))
                if z is not None:
                    z = z.reshape((1,) * (rank - z.dim()) + tuple(z.shape)).permute(to_first(rank))
            if c.pre_pad is not None:
                x = F.pad(x, c.pre_pad)
            if variant in ("channels_last", "pad_channels"):
                x = x.contiguous(memory_format=torch.channels_last)
                w = w_cl if w_cl is not None else w.contiguous(memory_format=torch.channels_last)
            if fused == "relu":
                y = torch.ops.aten.cudnn_convolution_relu(
                    x, w, b, c.strides, c.pads, c.dil, c.group
                )
            elif fused == "add_relu":
                assert z is not None
                y = torch.ops.aten.cudnn_convolution_add_relu(
                    x, w, z.contiguous(memory_format=_fmt(x)), 1.0, b, c.strides, c.pads, c.dil,
                    c.group,
                )  # fmt: skip
            else:
                y = conv(x, w, b, c.strides, c.pads, c.dil, c.group)
                y = act_inplace(y, c.act, c.params)
                if z is not None:
                    y = _add_residual(y, z)
                y = act_inplace(y, c.post, c.post_params)
            if c.nhwc:
                return [y.permute(to_last(rank)).contiguous()]
            return [y.contiguous()]  # NCHW, as the op's output is laid out

        if cfg.get("benchmark") and torch.device(build.device).type == "cuda":
            return _with_precision(_cudnn_benchmark(run), build)
        return _with_precision(run, build)

    return make


def _cudnn_benchmark(run: RunFn) -> RunFn:
    """Run with cudnn.benchmark on: cuDNN times its algorithms for the shape on the first call
    (the tuner's warm-up, the runtime's warm-up before graph capture) and keeps the fastest,
    instead of its heuristic pick, which is often far off for channels-last FP16."""
    return _pinned(run, [(torch.backends.cudnn, "benchmark", True)])


def _cudnn_configs(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], build: BuildInfo
) -> list[dict[str, Any]]:
    """cuDNN's heuristic algorithm and its benchmarked one."""
    return [{}, {"benchmark": 1}]


def _fmt(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _make_conv_s2d(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """A stride-2 convolution over few channels (an RGB stem) as a stride-1 one over
    space-to-depth blocks: y[o,i,j] = sum w[o,c,p,q] xpad[c,2i+p,2j+q] with p = 2a+r, q = 2b+s
    is a conv with kernel ceil(k/2) over the 4C channels (r, s, c) of xpad's 2x2 blocks. The
    7x7/2 stem on 3 channels becomes a 4x4/1 conv on 12 (zero-padded to 16), which suits
    tensor cores far better; the weights are rearranged once here."""
    c = _conv_parse(attrs, inputs)
    w = _weight(node, 1, inputs, build)
    if c is None or w is None or c.nd != 2 or c.group != 1 or list(c.strides) != [2, 2]:
        return None
    if list(c.dil) != [1, 1] or optional_input(inputs, 3) is not None:
        return None
    wn = w.permute(to_first(4)) if c.nhwc else w  # [M, C, kh, kw]
    m, cin, kh, kw = (int(d) for d in wn.shape)
    if cin > 4 or kh < 3 or kw < 3:
        return None
    try:
        _, _, pads, auto_pad = window_params(attrs, 2, [kh, kw])
    except ValueError:
        return None
    if auto_pad not in ("NOTSET", "", None):
        return None
    kh2, kw2 = -(-kh // 2), -(-kw // 2)
    w8 = F.pad(wn, (0, 2 * kw2 - kw, 0, 2 * kh2 - kh))  # zero taps up to even kernels
    w2 = w8.reshape(m, cin, kh2, 2, kw2, 2).permute(0, 3, 5, 1, 2, 4).reshape(m, 4 * cin, kh2, kw2)
    cpad = -(4 * cin) % 8
    w2 = F.pad(w2, (0, 0, 0, 0, 0, cpad)).contiguous(memory_format=torch.channels_last)
    pt, pl, pb, pr = (int(v) for v in pads)
    out_hw = c.out_shape[2:]
    relu = c.act == "Relu" and _HAS_CUDNN_RELU and torch.device(build.device).type == "cuda"

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x = xs[0]
        b = xs[2] if len(xs) > 2 else None
        assert x is not None
        xl = x if c.nhwc else x.permute(0, 2, 3, 1)  # [N, H, W, C] view
        n, h, wd, _ = xl.shape
        eb, er = (h + pt + pb) % 2, (wd + pl + pr) % 2  # one more zero row/column if odd
        xp = F.pad(xl, (0, 0, pl, pr + er, pt, pb + eb))
        hb, wb = xp.shape[1] // 2, xp.shape[2] // 2
        # [N, H/2, 2, W/2, 2, C] -> [N, H/2, W/2, (r, s, C)]: the NHWC input of the new conv
        xs2 = xp.reshape(n, hb, 2, wb, 2, cin).permute(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, 4 * cin)
        if cpad:
            xs2 = F.pad(xs2, (0, cpad))
        xs2 = xs2.contiguous().permute(0, 3, 1, 2)  # channels-last NCHW view
        if relu:
            y = torch.ops.aten.cudnn_convolution_relu(xs2, w2, b, [1, 1], [0, 0], [1, 1], 1)
        else:
            y = act_inplace(F.conv2d(xs2, w2, b), c.act, c.params)
        y = y[:, :, : out_hw[0], : out_hw[1]]
        y = act_inplace(y, c.post, c.post_params)
        if c.nhwc:
            return [y.permute(to_last(4)).contiguous()]
        return [y.contiguous()]

    return _with_precision(run, build)


def conv_as_gemm(attrs: dict[str, Any], inputs: list[TensorInfo | None]) -> _Conv | None:
    """The parsed convolution when it is a GEMM on [N*H*W, C]: channels-last, 2-D, 1x1,
    stride 1, no padding, one group (W [Cout, 1, 1, Cin]); else None."""
    c = _conv_parse(attrs, inputs)
    w = optional_input(inputs, 1)
    if c is None or w is None or not c.nhwc or c.nd != 2 or c.group != 1:
        return None
    if tuple(w.shape[1:-1]) != (1, 1) or c.pre_pad is not None:
        return None
    if any(s != 1 for s in c.strides) or any(p != 0 for p in c.pads):
        return None
    return c


def _make_conv1x1_gemm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    """A channels-last 1x1 convolution with stride 1 and no padding is a GEMM on [N*H*W, C]:
    cuBLAS(Lt) with its bias+ReLU epilogue where the node has one, the output already NHWC."""
    c = conv_as_gemm(attrs, inputs)
    w_info = optional_input(inputs, 1)
    if c is None or w_info is None:
        return None
    m, cin = int(w_info.shape[0]), int(w_info.shape[-1])
    lt_relu = _HAS_ADDMM_ACT and c.act == "Relu" and optional_input(inputs, 2) is not None
    lt_relu = lt_relu and torch.device(build.device).type == "cuda"

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, w = xs[0], xs[1]
        b = xs[2] if len(xs) > 2 else None
        z = xs[3] if len(xs) > 3 else None
        assert x is not None and w is not None
        x2, wk = x.reshape(-1, cin), w.reshape(m, cin).t()
        if lt_relu:
            y = torch._addmm_activation(b, x2, wk, use_gelu=False)
        else:
            y = torch.addmm(b, x2, wk) if b is not None else torch.mm(x2, wk)
            y = act_inplace(y, c.act, c.params)
        y = y.reshape(*x.shape[:-1], m)
        if z is not None:
            y = _add_residual(y, z)
        return [act_inplace(y, c.post, c.post_params)]

    return _with_precision(run, build)


tactic("FusedConv", "cudnn", "ecoinfer", ("cuda",), _CUDA_DT, _cudnn_configs)(_conv_maker("plain"))
tactic("FusedConv", "cudnn_channels_last", "ecoinfer", ("cuda",), _CUDA_DT, _cudnn_configs)(
    _conv_maker("channels_last")
)
tactic("FusedConv", "cudnn_pad_channels", "ecoinfer", ("cuda",), _CUDA_DT, _cudnn_configs)(
    _conv_maker("pad_channels")
)
if _HAS_CUDNN_RELU or _HAS_CUDNN_ADD_RELU:
    tactic("FusedConv", "cudnn_fused_relu", "ecoinfer", ("cuda",), _CUDA_DT, _cudnn_configs)(
        _conv_maker("fused")
    )
tactic("FusedConv", "conv", "ecoinfer", ("cpu",), _CPU_DT)(_conv_maker("plain"))
tactic("FusedConv", "cublas_1x1", "ecoinfer", ("cuda",), _CUDA_DT)(_make_conv1x1_gemm)
tactic("FusedConv", "cudnn_space_to_depth", "ecoinfer", ("cuda",), _CUDA_DT)(_make_conv_s2d)
tactic("FusedConv", "addmm_1x1", "ecoinfer", ("cpu",), _CPU_DT)(_make_conv1x1_gemm)
tactic("FusedConv", "conv_channels_last", "ecoinfer", ("cpu",), _CPU_DT)(
    _conv_maker("channels_last")
)


# ---------------------------------------------------------------------- attention (SDPA)
# How the op's masks map onto SDPA's single attn_mask (semantics: ir/ops/fused_attention.py):
#   where(keep, S, -inf) + add  ==  S + where(keep, add, -inf)   (exact for mask_fill = -inf)
#   causal (top-left) folds into the mask as tril(Sq, Sk), or is_causal=True when Sq == Sk and
#   there is no other mask. A finite mask_fill <= -1e4 gives a masked score whose exp()
#   underflows to exactly 0 as -inf does, as long as the row keeps one visible score: true for
#   causal alone (key 0 is always visible), not for keep masks or an additive mask on top, so
#   those cases are not applicable. Rows where every key is masked ("dead" rows) are NaN in the
#   op (0 with nan_to_zero) whatever a backend gives for them: they are found from the mask
#   (small: [B|1, H|1, Sq|1, Sk]) and overwritten.
_FILL_AS_INF = -1e4


@dataclass(frozen=True)
class _MaskPlan:
    causal_flag: bool  # SDPA's is_causal=True (no explicit mask)
    tril: Tensor | None  # causal folded into the explicit mask
    has_add: bool
    has_keep: bool
    dead_value: float | None  # what dead rows become (None: no row can be dead)
    static: tuple[Tensor | None, Tensor | None] | None  # (mask, dead) when masks are weights


def _mask_plan(
    node: Node,
    attrs: dict[str, Any],
    inputs: list[TensorInfo | None],
    build: BuildInfo,
    sq: int,
    sk: int,
    add_idx: int = 3,
    keep_idx: int = 4,
) -> _MaskPlan | None:
    add, keep = optional_input(inputs, add_idx), optional_input(inputs, keep_idx)
    causal = bool(int(attrs.get("is_causal", 0) or 0))
    fill = float(attrs.get("mask_fill", float("-inf")))
    if keep is not None and keep.dtype != torch.bool:
        return None
    for m in (add, keep):
        if m is not None and len(m.shape) > 4:
            return None
    if fill != float("-inf"):
        if keep is not None:
            return None
        if causal and (add is not None or not fill <= _FILL_AS_INF):
            return None
    causal_flag = causal and add is None and keep is None and sq == sk
    tril = None
    if causal and not causal_flag:
        tril = torch.ones(sq, sk, dtype=torch.bool, device=build.device).tril()
    can_die = add is not None or keep is not None
    dead_value = (0.0 if attrs.get("nan_to_zero") else float("nan")) if can_die else None
    plan = _MaskPlan(causal_flag, tril, add is not None, keep is not None, dead_value, None)
    if can_die:
        add_w = _weight(node, add_idx, inputs, build) if add is not None else None
        keep_w = _weight(node, keep_idx, inputs, build) if keep is not None else None
        if (add is None or add_w is not None) and (keep is None or keep_w is not None):
            mask, dead = _build_mask(plan, add_w, keep_w)  # constant masks: built once
            if dead is not None and not bool(dead.any()):
                dead = None
            plan = _MaskPlan(
                causal_flag, tril, add is not None, keep is not None, dead_value, (mask, dead)
            )
    return plan


def _build_mask(
    plan: _MaskPlan, add: Tensor | None, keep: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """(SDPA attn_mask, dead-row flags [..., Sq|1, 1] or None)."""
    if plan.tril is not None:
        keep = plan.tril if keep is None else keep & plan.tril
    if add is None and keep is None:
        return None, None
    if add is None:
        assert keep is not None
        return keep, (~keep).all(-1, keepdim=True)
    if keep is not None:
        ninf = torch.full((), float("-inf"), dtype=add.dtype, device=add.device)
        add = torch.where(keep, add, ninf)
    return add, torch.isneginf(add).all(-1, keepdim=True)


def _sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    add: Tensor | None,
    keep: Tensor | None,
    plan: _MaskPlan,
    scale: float,
    backend: Any,
) -> Tensor:
    if plan.static is not None:
        mask, dead = plan.static
    else:
        mask, dead = _build_mask(plan, add, keep)
    with _FLAGS, sdpa_kernel(backend):
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=plan.causal_flag, scale=scale
        )
    if dead is not None and plan.dead_value is not None:
        y = y.masked_fill_(dead, plan.dead_value)
    return y


def _attention_maker(backend_name: str) -> Callable[..., RunFn | None]:
    def make(
        node: Node,
        attrs: dict[str, Any],
        inputs: list[TensorInfo | None],
        cfg: dict,
        build: BuildInfo,
    ) -> RunFn | None:
        backend = getattr(SDPBackend, backend_name, None)
        q, k, v = optional_input(inputs, 0), optional_input(inputs, 1), optional_input(inputs, 2)
        if backend is None or q is None or k is None or v is None:
            return None
        if _float_inputs(inputs, 0, 1, 2, 3) is None:
            return None
        if not (len(q.shape) == len(k.shape) == len(v.shape) == 4):
            return None
        kt = bool(int(attrs.get("k_transposed", 0) or 0))
        ks = (*k.shape[:2], k.shape[3], k.shape[2]) if kt else tuple(k.shape)
        if not (q.shape[:2] == ks[:2] == v.shape[:2]):
            return None  # broadcast batch/head dims: not SDPA's contract
        if q.shape[3] != ks[3] or ks[2] != v.shape[2]:
            return None
        plan = _mask_plan(node, attrs, inputs, build, q.shape[2], ks[2])
        if plan is None or _unsupported(backend_name, build, plan, q.dtype, q.shape[3], v.shape[3]):
            return None
        scale = float(attrs.get("scale", 1.0))
        copy_k = kt and backend_name != "MATH"  # fused kernels need unit stride on the last dim

        def run(xs: list[Tensor | None]) -> list[Tensor]:
            q, k, v = xs[0], xs[1], xs[2]
            assert q is not None and k is not None and v is not None
            if kt:
                k = k.transpose(-1, -2)
                if copy_k:
                    k = k.contiguous()
            add = xs[3] if len(xs) > 3 else None
            keep = xs[4] if len(xs) > 4 else None
            return [_sdpa(q, k, v, add, keep, plan, scale, backend)]

        return _with_precision(run, build)

    return make


def _mha_maker(backend_name: str) -> Callable[..., RunFn | None]:
    def make(
        node: Node,
        attrs: dict[str, Any],
        inputs: list[TensorInfo | None],
        cfg: dict,
        build: BuildInfo,
    ) -> RunFn | None:
        backend = getattr(SDPBackend, backend_name, None)
        h, d = int(attrs.get("num_heads", 0) or 0), int(attrs.get("head_size", 0) or 0)
        packed = bool(int(attrs.get("packed", 0) or 0))
        q = optional_input(inputs, 0)
        if backend is None or q is None or h <= 0 or d <= 0 or len(q.shape) != 3:
            return None
        if _float_inputs(inputs, 0, 1, 2, 3) is None or optional_input(inputs, 5) is not None:
            return None  # y_scale (codes out, link_codes): triton_flash's
        if optional_input(inputs, 6) is not None:
            return None  # x_scale (quantized QKV): triton_flash's
        if packed:
            dv_total = q.shape[2] - 2 * h * d
            if dv_total <= 0 or dv_total % h:
                return None
            sk, dv = q.shape[1], dv_total // h
        else:
            k, v = optional_input(inputs, 1), optional_input(inputs, 2)
            if k is None or v is None or len(k.shape) != 3 or len(v.shape) != 3:
                return None
            if q.shape[2] != h * d or k.shape[2] != h * d or v.shape[2] % h:
                return None
            if not (q.shape[0] == k.shape[0] == v.shape[0]) or k.shape[1] != v.shape[1]:
                return None
            sk, dv = k.shape[1], v.shape[2] // h
        plan = _mask_plan(node, attrs, inputs, build, q.shape[1], sk)
        if plan is None or _unsupported(backend_name, build, plan, q.dtype, d, dv):
            return None
        scale = float(attrs.get("scale", 1.0))

        def heads(x: Tensor) -> Tensor:
            b, s, _ = x.shape
            return x.reshape(b, s, h, -1).transpose(1, 2)  # a view: last dim stays unit-stride

        def run(xs: list[Tensor | None]) -> list[Tensor]:
            if packed:
                qkv = xs[0]
                assert qkv is not None
                q, k, v = qkv[..., : h * d], qkv[..., h * d : 2 * h * d], qkv[..., 2 * h * d :]
            else:
                q, k, v = xs[0], xs[1], xs[2]
            assert q is not None and k is not None and v is not None
            add = xs[3] if len(xs) > 3 else None
            keep = xs[4] if len(xs) > 4 else None
            y = _sdpa(heads(q), heads(k), heads(v), add, keep, plan, scale, backend)
            b, _, s, dv = y.shape
            return [y.transpose(1, 2).reshape(b, s, h * dv)]

        return _with_precision(run, build)

    return make


def _unsupported(
    backend_name: str, build: BuildInfo, plan: _MaskPlan, dtype: torch.dtype, d: int, dv: int
) -> bool:
    """Known limits of a backend (the autotuner would find them too, at the price of a run)."""
    if backend_name == "FLASH_ATTENTION" and d != dv:
        return True  # flash needs one head size for Q, K and V (CPU and CUDA)
    if torch.device(build.device).type != "cuda":
        return False
    if backend_name in ("FLASH_ATTENTION", "CUDNN_ATTENTION") and dtype == torch.float32:
        return True  # half-precision kernels only
    # CUDA flash attention takes no attn_mask (CPU's does)
    return backend_name == "FLASH_ATTENTION" and (
        plan.has_add or plan.has_keep or plan.tril is not None
    )


_SDPA = (
    ("sdpa_flash", "FLASH_ATTENTION", ("cpu", "cuda")),
    ("sdpa_efficient", "EFFICIENT_ATTENTION", ("cuda",)),
    ("sdpa_cudnn", "CUDNN_ATTENTION", ("cuda",)),
    ("sdpa_math", "MATH", ("cpu", "cuda")),
)
if SDPBackend is not None:
    for _name, _backend, _devices in _SDPA:
        if hasattr(SDPBackend, _backend):
            tactic("Attention", _name, "ecoinfer", _devices, _CUDA_DT)(_attention_maker(_backend))
            tactic("MultiHeadAttention", _name, "ecoinfer", _devices, _CUDA_DT)(
                _mha_maker(_backend)
            )


# ---------------------------------------------------------------------- normalization
def _norm_parse(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], n_params: int
) -> list[int] | None:
    """The normalized shape when F.layer_norm / F.rms_norm computes the node exactly."""
    x = optional_input(inputs, 0)
    if x is None or x.dtype not in _FLOATS or len(x.shape) == 0:
        return None
    if any(node.outputs[1:]):
        return None  # mean / inv-std-dev outputs are wanted: the reference computes them
    if int(attrs.get("stash_type", 1) or 1) != 1:
        return None  # statistics in another precision than float32
    r = len(x.shape)
    axis = int(attrs.get("axis", -1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        return None
    norm = list(x.shape[axis:])
    for i in range(1, 1 + n_params):
        p = optional_input(inputs, i)
        if p is None:
            if i == 1:
                return None
            continue
        if list(p.shape) != norm or p.dtype != x.dtype:
            return None
    return norm


def _make_layer_norm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    norm = _norm_parse(node, attrs, inputs, 2)
    if norm is None:
        return None
    eps = float(attrs.get("epsilon", 1e-5))

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, scale = xs[0], xs[1]
        bias = xs[2] if len(xs) > 2 else None
        assert x is not None
        return [F.layer_norm(x, norm, scale, bias, eps)]

    return run


def _make_rms_norm(
    node: Node, attrs: dict[str, Any], inputs: list[TensorInfo | None], cfg: dict, build: BuildInfo
) -> RunFn | None:
    norm = _norm_parse(node, attrs, inputs, 1)
    if norm is None:
        return None
    eps = float(attrs.get("epsilon", 1e-5))

    def run(xs: list[Tensor | None]) -> list[Tensor]:
        x, scale = xs[0], xs[1]
        assert x is not None
        return [F.rms_norm(x, norm, scale, eps)]

    return run


tactic("LayerNormalization", "torch_layer_norm", "", ("cpu", "cuda"), _CUDA_DT)(_make_layer_norm)
if _HAS_RMS_NORM:
    tactic("RMSNormalization", "torch_rms_norm", "", ("cpu", "cuda"), _CUDA_DT)(_make_rms_norm)
