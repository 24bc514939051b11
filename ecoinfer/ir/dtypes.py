"""Data types: ONNX element types <-> ecoinfer names <-> torch and numpy dtypes."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from ecoinfer.errors import UnsupportedDTypeError


@dataclass(frozen=True)
class DTypeInfo:
    name: str
    onnx: int
    torch: torch.dtype | None
    numpy: np.dtype | None


def _t(name: str) -> torch.dtype | None:
    return getattr(torch, name, None)


_TABLE = [
    DTypeInfo("float32", 1, torch.float32, np.dtype(np.float32)),
    DTypeInfo("uint8", 2, torch.uint8, np.dtype(np.uint8)),
    DTypeInfo("int8", 3, torch.int8, np.dtype(np.int8)),
    DTypeInfo("uint16", 4, _t("uint16"), np.dtype(np.uint16)),
    DTypeInfo("int16", 5, torch.int16, np.dtype(np.int16)),
    DTypeInfo("int32", 6, torch.int32, np.dtype(np.int32)),
    DTypeInfo("int64", 7, torch.int64, np.dtype(np.int64)),
    DTypeInfo("string", 8, None, np.dtype(object)),
    DTypeInfo("bool", 9, torch.bool, np.dtype(np.bool_)),
    DTypeInfo("float16", 10, torch.float16, np.dtype(np.float16)),
    DTypeInfo("float64", 11, torch.float64, np.dtype(np.float64)),
    DTypeInfo("uint32", 12, _t("uint32"), np.dtype(np.uint32)),
    DTypeInfo("uint64", 13, _t("uint64"), np.dtype(np.uint64)),
    DTypeInfo("complex64", 14, torch.complex64, np.dtype(np.complex64)),
    DTypeInfo("complex128", 15, torch.complex128, np.dtype(np.complex128)),
    DTypeInfo("bfloat16", 16, torch.bfloat16, np.dtype(ml_dtypes.bfloat16)),
    DTypeInfo("float8e4m3fn", 17, _t("float8_e4m3fn"), np.dtype(ml_dtypes.float8_e4m3fn)),
    DTypeInfo("float8e4m3fnuz", 18, _t("float8_e4m3fnuz"), np.dtype(ml_dtypes.float8_e4m3fnuz)),
    DTypeInfo("float8e5m2", 19, _t("float8_e5m2"), np.dtype(ml_dtypes.float8_e5m2)),
    DTypeInfo("float8e5m2fnuz", 20, _t("float8_e5m2fnuz"), np.dtype(ml_dtypes.float8_e5m2fnuz)),
    DTypeInfo("uint4", 21, None, np.dtype(ml_dtypes.uint4)),
    DTypeInfo("int4", 22, None, np.dtype(ml_dtypes.int4)),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_ONNX = {d.onnx: d for d in _TABLE}
BY_TORCH = {d.torch: d for d in _TABLE if d.torch is not None}
BY_NUMPY = {d.numpy: d for d in _TABLE if d.numpy is not None and d.name != "string"}

FLOAT_TYPES = frozenset(
    {"float16", "bfloat16", "float32", "float64"} | {n for n in BY_NAME if n.startswith("float8")}
)
INT_TYPES = frozenset(
    {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "int4", "uint4"}
)
# dtypes a torch tensor can hold in ecoinfer's runtime
SUPPORTED = frozenset(n for n, d in BY_NAME.items() if d.torch is not None)


def from_onnx(elem_type: int, where: str = "") -> str:
    info = BY_ONNX.get(elem_type)
    if info is None:
        raise UnsupportedDTypeError(
            f"{where}: ONNX element type {elem_type} is not supported by ecoinfer"
            if where
            else f"ONNX element type {elem_type} is not supported by ecoinfer"
        )
    return info.name


def to_onnx(name: str) -> int:
    return BY_NAME[name].onnx


def to_torch(name: str, where: str = "") -> torch.dtype:
    info = BY_NAME.get(name)
    if info is None or info.torch is None:
        raise UnsupportedDTypeError(
            f"{where + ': ' if where else ''}dtype {name} has no torch equivalent; "
            f"ecoinfer runs {', '.join(sorted(SUPPORTED))}"
        )
    return info.torch


def from_torch(dtype: torch.dtype) -> str:
    info = BY_TORCH.get(dtype)
    if info is None:
        raise UnsupportedDTypeError(f"torch dtype {dtype} is not supported by ecoinfer")
    return info.name


def from_numpy(dtype: np.dtype, where: str = "") -> str:
    info = BY_NUMPY.get(np.dtype(dtype))
    if info is None:
        raise UnsupportedDTypeError(
            f"{where + ': ' if where else ''}numpy dtype {dtype} is not supported by ecoinfer"
        )
    return info.name


def numpy_to_torch(array: np.ndarray, where: str = "") -> torch.Tensor:
    """Exact conversion (no value changes) including bfloat16/float8 via ml_dtypes."""
    name = from_numpy(array.dtype, where)
    tdt = to_torch(name, where)
    # ascontiguousarray alone turns a 0-d array into shape [1]: keep scalars scalar
    array = np.ascontiguousarray(array).reshape(array.shape)
    if name == "bfloat16" or name.startswith("float8") or name in ("uint16", "uint32", "uint64"):
        # numpy <-> torch can't share these dtypes directly: move the raw bits
        size = array.dtype.itemsize
        raw = torch.from_numpy(array.view(np.dtype(f"i{size}")).copy())
        return raw.view(tdt)
    return torch.from_numpy(array.copy())


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Exact conversion back; dtypes numpy lacks come out as ml_dtypes arrays."""
    t = t.detach().cpu().contiguous()
    name = from_torch(t.dtype)
    npdt = BY_NAME[name].numpy
    if name == "bfloat16" or name.startswith("float8") or name in ("uint16", "uint32", "uint64"):
        raw_t = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.view(raw_t).numpy().view(npdt)
    return t.numpy()
