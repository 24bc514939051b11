"""The few CUDA driver calls the torch-free runtime needs, through ctypes on libcuda.

Memory, copies, module loading, kernel launches (cuLaunchKernelEx, for programmatic dependent
launch and clusters), TMA descriptors and stream capture into a CUDA graph. Every call is
checked: a failure raises LeanCudaError naming the call and CUDA's own message.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint, c_uint64, c_void_p

from ecoinfer.errors import EcoinferError


class LeanCudaError(EcoinferError):
    """A CUDA driver call of the torch-free runtime failed (or there is no CUDA driver)."""


# enums (cuda.h)
DEV_ATTR_CC_MAJOR = 75
DEV_ATTR_CC_MINOR = 76
DEV_ATTR_SMEM_PER_SM = 81
DEV_ATTR_SMEM_OPTIN = 97
FUNC_ATTR_SHARED_SIZE_BYTES = 1
FUNC_ATTR_MAX_DYNAMIC_SHARED = 8
FUNC_CACHE_PREFER_SHARED = 1
STREAM_NON_BLOCKING = 1
CAPTURE_MODE_THREAD_LOCAL = 1
LAUNCH_ATTR_COOPERATIVE = 2
LAUNCH_ATTR_CLUSTER_DIMENSION = 4
LAUNCH_ATTR_CLUSTER_SCHEDULING = 5
LAUNCH_ATTR_PDL = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
CLUSTER_SCHEDULING_SPREAD = 1
TMA_INTERLEAVE_NONE = 0
TMA_L2_PROMOTION_128B = 2
TMA_OOB_FILL_NONE = 0
TMA_OOB_FILL_NAN = 1


class LaunchAttribute(ctypes.Structure):
    # CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union
    _fields_ = [("id", c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_ubyte * 64)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [
        ("gridDimX", c_uint),
        ("gridDimY", c_uint),
        ("gridDimZ", c_uint),
        ("blockDimX", c_uint),
        ("blockDimY", c_uint),
        ("blockDimZ", c_uint),
        ("sharedMemBytes", c_uint),
        ("hStream", c_void_p),
        ("attrs", POINTER(LaunchAttribute)),
        ("numAttrs", c_uint),
    ]


def attribute(attr_id: int, *values: int) -> LaunchAttribute:
    """A launch attribute whose value is the given 32-bit integers (cooperative: 1; PDL: 1;
    cluster dimension: x, y, z; scheduling policy: the enum)."""
    a = LaunchAttribute()
    a.id = attr_id
    ctypes.memmove(ctypes.addressof(a.value), (c_uint * len(values))(*values), 4 * len(values))
    return a


class Driver:
    """libcuda, initialised, with the primary context of one device current in this thread."""

    def __init__(self, ordinal: int = 0):
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise LeanCudaError(
                f"the torch-free runtime needs the NVIDIA driver (libcuda.so.1), which is not "
                f"loadable here ({e}); run engines on the CPU with ecoinfer.load_engine instead"
            ) from None
        self._declare()
        self.check(self.lib.cuInit(0), "cuInit")
        dev = c_int()
        self.check(self.lib.cuDeviceGet(byref(dev), ordinal), f"cuDeviceGet({ordinal})")
        self.device = dev.value
        ctx = c_void_p()
        self.check(self.lib.cuDevicePrimaryCtxRetain(byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self.context = ctx
        self.make_current()

    def _declare(self) -> None:
        lib = self.lib
        sigs: dict[str, list] = {
            "cuInit": [c_uint],
            "cuDeviceGet": [POINTER(c_int), c_int],
            "cuDeviceGetName": [c_char_p, c_int, c_int],
            "cuDeviceGetAttribute": [POINTER(c_int), c_int, c_int],
            "cuDevicePrimaryCtxRetain": [POINTER(c_void_p), c_int],
            "cuCtxSetCurrent": [c_void_p],
            "cuMemAlloc_v2": [POINTER(c_uint64), c_size_t],
            "cuMemFree_v2": [c_uint64],
            "cuMemcpyHtoDAsync_v2": [c_uint64, c_void_p, c_size_t, c_void_p],
            "cuMemcpyDtoHAsync_v2": [c_void_p, c_uint64, c_size_t, c_void_p],
            "cuMemcpyHtoD_v2": [c_uint64, c_void_p, c_size_t],
            "cuModuleLoadData": [POINTER(c_void_p), c_void_p],
            "cuModuleGetFunction": [POINTER(c_void_p), c_void_p, c_char_p],
            "cuFuncGetAttribute": [POINTER(c_int), c_int, c_void_p],
            "cuFuncSetAttribute": [c_void_p, c_int, c_int],
            "cuFuncSetCacheConfig": [c_void_p, c_int],
            "cuStreamCreate": [POINTER(c_void_p), c_uint],
            "cuStreamSynchronize": [c_void_p],
            "cuLaunchKernelEx": [POINTER(LaunchConfig), c_void_p, c_void_p, c_void_p],
            "cuTensorMapEncodeTiled": [
                c_void_p,  # CUtensorMap*
                c_int,  # data type
                c_uint,  # rank
                c_void_p,  # global address
                POINTER(c_uint64),  # global dims
                POINTER(c_uint64),  # global strides (bytes, rank - 1)
                POINTER(c_uint),  # box dims
                POINTER(c_uint),  # element strides
                c_int,  # interleave
                c_int,  # swizzle
                c_int,  # L2 promotion
                c_int,  # OOB fill
            ],
            "cuStreamBeginCapture_v2": [c_void_p, c_int],
            "cuStreamEndCapture": [c_void_p, POINTER(c_void_p)],
            "cuGraphInstantiateWithFlags": [POINTER(c_void_p), c_void_p, c_uint64],
            "cuGraphLaunch": [c_void_p, c_void_p],
            "cuGetErrorString": [c_int, POINTER(c_char_p)],
        }
        for name, args in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = c_int

    def check(self, result: int, call: str) -> None:
        if result != 0:
            msg = c_char_p()
            self.lib.cuGetErrorString(result, byref(msg))
            text = msg.value.decode() if msg.value else "unknown error"
            raise LeanCudaError(f"CUDA driver call {call} failed: {text} (error {result})")

    def make_current(self) -> None:
        self.check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    # ------------------------------------------------------------------ device facts
    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.check(self.lib.cuDeviceGetName(buf, 256, self.device), "cuDeviceGetName")
        return buf.value.decode()

    def attribute(self, attr: int) -> int:
        v = c_int()
        self.check(
            self.lib.cuDeviceGetAttribute(byref(v), attr, self.device), "cuDeviceGetAttribute"
        )
        return v.value

    def capability(self) -> str:
        return f"{self.attribute(DEV_ATTR_CC_MAJOR)}.{self.attribute(DEV_ATTR_CC_MINOR)}"

    # ------------------------------------------------------------------ memory
    def alloc(self, nbytes: int) -> int:
        p = c_uint64()
        self.check(self.lib.cuMemAlloc_v2(byref(p), max(nbytes, 1)), f"cuMemAlloc({nbytes})")
        return p.value

    def free(self, ptr: int) -> None:
        self.lib.cuMemFree_v2(ptr)

    def upload(self, dst: int, src_address: int, nbytes: int, stream: c_void_p) -> None:
        self.check(
            self.lib.cuMemcpyHtoDAsync_v2(dst, src_address, nbytes, stream), "cuMemcpyHtoDAsync"
        )

    def download(self, dst_address: int, src: int, nbytes: int, stream: c_void_p) -> None:
        self.check(
            self.lib.cuMemcpyDtoHAsync_v2(dst_address, src, nbytes, stream), "cuMemcpyDtoHAsync"
        )

    # ------------------------------------------------------------------ streams and graphs
    def stream(self) -> c_void_p:
        s = c_void_p()
        self.check(self.lib.cuStreamCreate(byref(s), STREAM_NON_BLOCKING), "cuStreamCreate")
        return s

    def synchronize(self, stream: c_void_p) -> None:
        self.check(self.lib.cuStreamSynchronize(stream), "cuStreamSynchronize")

    def begin_capture(self, stream: c_void_p) -> None:
        self.check(
            self.lib.cuStreamBeginCapture_v2(stream, CAPTURE_MODE_THREAD_LOCAL),
            "cuStreamBeginCapture",
        )

    def end_capture(self, stream: c_void_p) -> c_void_p:
        g = c_void_p()
        self.check(self.lib.cuStreamEndCapture(stream, byref(g)), "cuStreamEndCapture")
        exe = c_void_p()
        self.check(self.lib.cuGraphInstantiateWithFlags(byref(exe), g, 0), "cuGraphInstantiate")
        return exe

    def graph_launch(self, exe: c_void_p, stream: c_void_p) -> None:
        self.check(self.lib.cuGraphLaunch(exe, stream), "cuGraphLaunch")

    # ------------------------------------------------------------------ kernels
    def load_function(self, image: bytes, name: str, shared: int) -> c_void_p:
        """The kernel `name` of a cubin, with its dynamic shared memory raised past 48 KiB
        where it needs that (as Triton's loader does)."""
        mod = c_void_p()
        buf = ctypes.create_string_buffer(image, len(image))
        self.check(self.lib.cuModuleLoadData(byref(mod), buf), f"cuModuleLoadData({name})")
        fn = c_void_p()
        self.check(
            self.lib.cuModuleGetFunction(byref(fn), mod, name.encode()),
            f"cuModuleGetFunction({name})",
        )
        optin = self.attribute(DEV_ATTR_SMEM_OPTIN)
        if shared > 49152 and optin > 49152:
            self.check(
                self.lib.cuFuncSetCacheConfig(fn, FUNC_CACHE_PREFER_SHARED), "cuFuncSetCacheConfig"
            )
            static = c_int()
            self.check(
                self.lib.cuFuncGetAttribute(byref(static), FUNC_ATTR_SHARED_SIZE_BYTES, fn),
                "cuFuncGetAttribute",
            )
            self.check(
                self.lib.cuFuncSetAttribute(fn, FUNC_ATTR_MAX_DYNAMIC_SHARED, optin - static.value),
                "cuFuncSetAttribute",
            )
        return fn

    def launch(self, config: LaunchConfig, fn: c_void_p, params: ctypes.Array, name: str) -> None:
        self.check(self.lib.cuLaunchKernelEx(byref(config), fn, params, None), f"launch {name}")

    def encode_tma(
        self,
        out_address: int,
        dtype: int,
        address: int,
        shape: list[int],
        strides: list[int],
        block: list[int],
        elem_size: int,
        swizzle: int,
        nan_padding: bool,
    ) -> None:
        """cuTensorMapEncodeTiled into the 64-byte aligned CUtensorMap at out_address, with
        the arguments Triton's fill_tma_descriptor passes (innermost dimension first)."""
        rank = len(shape)
        dims = (c_uint64 * rank)(*reversed(shape))
        # byte strides of every dimension but the innermost, innermost first
        st = (c_uint64 * max(rank - 1, 1))(*[elem_size * s for s in reversed(strides[:-1])] or [0])
        box = (c_uint * rank)(*reversed(block))
        ones = (c_uint * rank)(*([1] * rank))
        self.check(
            self.lib.cuTensorMapEncodeTiled(
                out_address,
                dtype,
                rank,
                address,
                dims,
                st,
                box,
                ones,
                TMA_INTERLEAVE_NONE,
                swizzle,
                TMA_L2_PROMOTION_128B,
                TMA_OOB_FILL_NAN if nan_padding else TMA_OOB_FILL_NONE,
            ),
            "cuTensorMapEncodeTiled",
        )
