"""cuBLASLt FP8 GEMMs with fused epilogues, called through ctypes.

torch._scaled_mm reaches cuBLASLt's FP8 GEMM but not its epilogues: no GELU, and codes out
only through a path torch does not expose for every dtype. TensorRT and Transformer Engine
run BERT's FFN-up as one cuBLASLt call (FP8 in, bias + GELU, FP8 out); this module does the
same for ecoinfer.QGemm (quant_tactics' `cublaslt_fp8`):

    D = d_scale * epilogue(x_scale * w_scale * (X @ W^T) + bias)    (fp32 inside)

X [M, K] and W [N, K] float8_e4m3fn codes, row-major (cuBLASLt's column-major "TN" form:
A = W transposed, B = X, D^T = Y). Epilogues: none, bias, GELU (cuBLASLt's GELU is the tanh
form: the tuner checks it against the exact one like any tactic), ReLU. D is float16 /
bfloat16, or float8_e4m3fn codes of Y / y_scale (d_scale = 1 / y_scale). Accumulation is
"fast" (no periodic promotion), as Triton's FP8 dots on sm_90.

The library is the one torch itself loaded (same process, same CUDA); nothing is downloaded
or built. Descriptors and the heuristic's algorithm are made once per problem (shape,
dtypes, epilogue) and device; scale and bias pointers are set per call, so calls can be
captured in CUDA graphs. A problem either has no workspace (the heuristic then offers only
kernels that need none) or WORKSPACE_BYTES of one, taken from torch's caching allocator on
the call's stream at each call: never shared, so engine contexts on different streams cannot
race on it, and inside a CUDA-graph capture it comes from the graph's own pool.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# cudaDataType_t
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF, _CUDA_R_8F_E4M3 = 0, 2, 14, 28
_DTYPE = {
    torch.float16: _CUDA_R_16F,
    torch.bfloat16: _CUDA_R_16BF,
    torch.float8_e4m3fn: _CUDA_R_8F_E4M3,
}
_COMPUTE_32F = 68  # cublasComputeType_t CUBLAS_COMPUTE_32F
_OP_N, _OP_T = 0, 1
# cublasLtMatmulDescAttributes_t
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER = 3, 4, 7, 8
_A_SCALE, _B_SCALE, _D_SCALE, _FAST_ACCUM, _BIAS_DATA_TYPE = 17, 18, 20, 25, 26
_PREF_MAX_WORKSPACE_BYTES = 1
# cublasLtEpilogue_t
EPILOGUES = {("", False): 1, ("", True): 4, ("Relu", False): 2, ("Relu", True): 6,
             ("Gelu", False): 32, ("Gelu", True): 36}  # fmt: skip
_HEURISTIC_BYTES = 96  # cublasLtMatmulHeuristicResult_t: algo (64), workspace, state, waves, 4 ints
MAX_ALGOS = 8  # the heuristic's first few, each a tuning candidate (QKV: the 8th was best, s22a)
HEURISTIC_REQUEST = 16  # results asked of the heuristic (probes time them all)
WORKSPACE_BYTES = 32 << 20  # cuBLAS's own recommendation on Hopper


class CublasLtError(RuntimeError):
    pass


@functools.cache
def _lib() -> ctypes.CDLL:
    """libcublasLt as torch loaded it: the file mapped into this process, else (no /proc) by
    the soname of torch's CUDA major version; never another copy on the loader's path."""
    torch.cuda.init()
    torch.empty(1, device="cuda") @ torch.empty(1, device="cuda")  # (loads cuBLAS/Lt)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libcublasLt" in ln})
    except OSError:
        paths = []
    found = [p for p in paths if os.path.exists(p)]
    major = (torch.version.cuda or "").split(".")[0]
    try:
        lib = ctypes.CDLL(found[0] if found else f"libcublasLt.so.{major}")
    except OSError:
        raise CublasLtError(
            "libcublasLt was not found in this process (torch without CUDA?)"
        ) from None
    vp, i32, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    protos = {
        "cublasLtCreate": [vp],
        "cublasLtMatmulDescCreate": [vp, i32, i32],
        "cublasLtMatmulDescSetAttribute": [vp, i32, vp, sz],
        "cublasLtMatrixLayoutCreate": [vp, i32, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64],
        "cublasLtMatmulPreferenceCreate": [vp],
        "cublasLtMatmulPreferenceSetAttribute": [vp, i32, vp, sz],
        "cublasLtMatmulPreferenceDestroy": [vp],
        "cublasLtMatmulAlgoGetHeuristic": [vp, vp, vp, vp, vp, vp, vp, i32, vp, vp],
        "cublasLtMatmul": [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, sz, vp],
    }
    for fn, args in protos.items():
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, ctypes.c_int
    return lib


def _addr(obj: ctypes._CData) -> int:
    return ctypes.addressof(obj)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"{what} failed: cublasStatus {status}")


@functools.cache
def _handle(device: int) -> ctypes.c_void_p:
    h = ctypes.c_void_p()
    with torch.cuda.device(device):
        _check(_lib().cublasLtCreate(_addr(h)), "cublasLtCreate")
    return h


def available(device: int | None = None) -> bool:
    """CUDA device `device` (default: the current one) has FP8 tensor cores (compute
    capability 8.9+) and the library loads."""
    if not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False
    try:
        _lib()
    except (CublasLtError, OSError):
        return False
    return True


@dataclass(frozen=True)
class Problem:
    m: int
    n: int
    k: int
    out: torch.dtype
    act: str  # "", "Relu", "Gelu"
    bias: torch.dtype | None
    device: int
    workspace: int = 0  # bytes the heuristic may assume (0, or WORKSPACE_BYTES)


class _Plan:
    """The descriptors of one problem and the heuristic's algorithms for it."""

    def __init__(self, p: Problem) -> None:
        with torch.cuda.device(p.device):  # the heuristic describes this device's GPU
            self._init(p)

    def _init(self, p: Problem) -> None:
        lib = _lib()
        self.p = p
        self.desc = ctypes.c_void_p()
        _check(lib.cublasLtMatmulDescCreate(_addr(self.desc), _COMPUTE_32F, _CUDA_R_32F),
               "cublasLtMatmulDescCreate")  # fmt: skip
        self._set(_TRANSA, ctypes.c_int32(_OP_T))
        self._set(_TRANSB, ctypes.c_int32(_OP_N))
        self._set(_EPILOGUE, ctypes.c_uint32(EPILOGUES[(p.act, p.bias is not None)]))
        self._set(_FAST_ACCUM, ctypes.c_int8(1))
        if p.bias is not None:
            self._set(_BIAS_DATA_TYPE, ctypes.c_int32(_DTYPE[p.bias]))
        # column-major: A = W^T (K x N, ld K), B = X^T (K x M, ld K), C / D = Y^T (N x M, ld N)
        c_type = _DTYPE[p.out] if p.out != torch.float8_e4m3fn else _DTYPE[p.bias or torch.float16]
        self.a = self._layout(_CUDA_R_8F_E4M3, p.k, p.n, p.k)
        self.b = self._layout(_CUDA_R_8F_E4M3, p.k, p.m, p.k)
        self.c = self._layout(c_type, p.n, p.m, p.n)
        self.d = self._layout(_DTYPE[p.out], p.n, p.m, p.n)
        pref = ctypes.c_void_p()
        _check(lib.cublasLtMatmulPreferenceCreate(_addr(pref)), "preference")
        ws = ctypes.c_uint64(p.workspace)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES,
               _addr(ws), ctypes.sizeof(ws)), "preference workspace")  # fmt: skip
        self.results = (ctypes.c_ubyte * (_HEURISTIC_BYTES * HEURISTIC_REQUEST))()
        found = ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(
            _handle(p.device), self.desc, self.a, self.b, self.c, self.d, pref,
            HEURISTIC_REQUEST, _addr(self.results), _addr(found))  # fmt: skip
        lib.cublasLtMatmulPreferenceDestroy(pref)
        self.n_algos = found.value if status == 0 else 0
        self.alpha = ctypes.c_float(1.0)
        self.beta = ctypes.c_float(0.0)
        self.lock = threading.Lock()  # the pointers are set on the shared descriptor
        # C is never read (beta 0). With codes out its type differs from D's, so it cannot be
        # D's memory (cuBLASLt: INVALID_VALUE): NULL, or where cuBLASLt refuses that (found on
        # the first call), from then on a scratch buffer of C's size
        self.c_scratch: Tensor | None = None

    def _set(self, attr: int, value: ctypes._SimpleCData) -> None:
        _check(_lib().cublasLtMatmulDescSetAttribute(self.desc, attr, _addr(value),
               ctypes.sizeof(value)), f"cublasLtMatmulDescSetAttribute({attr})")  # fmt: skip

    @staticmethod
    def _layout(dtype: int, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
        lay = ctypes.c_void_p()
        _check(_lib().cublasLtMatrixLayoutCreate(_addr(lay), dtype, rows, cols, ld),
               "cublasLtMatrixLayoutCreate")  # fmt: skip
        return lay

    def algo(self, i: int) -> int:
        """The address of the i-th heuristic result's algorithm (its first member)."""
        return _addr(self.results) + _HEURISTIC_BYTES * i

    def run(self, x: Tensor, w: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None,
            d_scale: Tensor | None, out: Tensor, algo: int) -> None:  # fmt: skip
        ptr = ctypes.c_void_p
        with self.lock, torch.cuda.device(self.p.device):
            self._set(_A_SCALE, ptr(w_scale.data_ptr()))
            self._set(_B_SCALE, ptr(x_scale.data_ptr()))
            if d_scale is not None:
                self._set(_D_SCALE, ptr(d_scale.data_ptr()))
            if bias is not None:
                self._set(_BIAS_POINTER, ptr(bias.data_ptr()))
            stream = torch.cuda.current_stream(out.device).cuda_stream
            n_ws = self.p.workspace
            # this call's own workspace, stream-ordered (freed to the allocator, which hands
            # it out again only to work queued after this call on this stream)
            ws = torch.empty(n_ws, dtype=torch.uint8, device=out.device) if n_ws else None

            def call(c_ptr: int | None) -> int:
                return _lib().cublasLtMatmul(
                    _handle(self.p.device), self.desc, _addr(self.alpha),
                    w.data_ptr(), self.a, x.data_ptr(), self.b, _addr(self.beta),
                    c_ptr, self.c, out.data_ptr(), self.d, self.algo(algo),
                    ws.data_ptr() if ws is not None else None, n_ws, stream)  # fmt: skip

            if self.p.out != torch.float8_e4m3fn:
                status = call(out.data_ptr())  # C and D alike: C may be D's memory
            elif self.c_scratch is not None:
                status = call(self.c_scratch.data_ptr())
            else:
                status = call(None)
                if status != 0:  # cuBLASLt wants a C of its own here
                    cdt = self.p.bias or torch.float16
                    self.c_scratch = torch.empty(self.p.m * self.p.n, dtype=cdt,
                                                 device=out.device)  # fmt: skip
                    status = call(self.c_scratch.data_ptr())
        _check(status, "cublasLtMatmul")


@functools.cache
def saturates(device: int) -> bool:
    """Whether codes out saturate at +-448 as the reference's quantize does (checked once on a
    small GEMM whose results are far beyond the range): E4M3 has no infinity, and a kernel
    that overflowed to NaN instead would pass the tuner's check on tame inputs and fail later
    on an outlier."""
    dev = torch.device("cuda", device)
    x = torch.full((32, 32), 448.0, device=dev).to(torch.float8_e4m3fn)
    one = torch.ones(1, device=dev)
    try:
        y = fp8_gemm(x, x, one, one, None, "", torch.float8_e4m3fn, one)
    except CublasLtError:
        return False
    return bool((y.float() == 448.0).all())


_plans: dict[Problem, _Plan] = {}
_plans_lock = threading.Lock()


def plan(p: Problem) -> _Plan:
    with _plans_lock:
        got = _plans.get(p)
        if got is None:
            got = _plans[p] = _Plan(p)
        return got


def fp8_gemm(
    x: Tensor,
    w: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    act: str = "",
    out_dtype: torch.dtype = torch.float16,
    d_scale: Tensor | None = None,
    algo: int = 0,
    workspace: int = 0,
) -> Tensor:
    """Y [M, N] = d_scale * act(x_scale * w_scale * X @ W^T + bias) in out_dtype (float8 codes
    with d_scale, the reciprocal of the reader's y_scale). X [M, K], W [N, K]: contiguous
    float8_e4m3fn; scales: float32 one-element device tensors; bias [N] float16/bfloat16.
    algo: the heuristic's algorithm of that rank for this M (tuning tries the first few),
    asked with `workspace` bytes of workspace allowed (0 or WORKSPACE_BYTES).
    Raises CublasLtError when cuBLASLt has no kernel for the problem (or fewer than algo+1)."""
    m, k = x.shape
    n = w.shape[0]
    # the heuristic ran with cuBLASLt's default alignment preference (256 bytes), so its
    # algorithms may assume it; a view at an offset goes through an aligned copy instead
    if x.data_ptr() % 256:
        x = x.clone()
    if w.data_ptr() % 256:
        w = w.clone()
    if bias is not None and bias.data_ptr() % 256:
        bias = bias.clone()
    if (out_dtype == torch.float8_e4m3fn) != (d_scale is not None):
        raise ValueError("fp8_gemm: codes out need d_scale, and only they")
    p = Problem(m, n, k, out_dtype, act, None if bias is None else bias.dtype,
                x.device.index or 0, workspace)  # fmt: skip
    pl = plan(p)
    if algo >= pl.n_algos:
        raise CublasLtError(f"cuBLASLt offers {pl.n_algos} algorithm(s) for {p}")
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    pl.run(x, w, x_scale, w_scale, bias, d_scale, out, algo)
    return out
