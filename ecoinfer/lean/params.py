"""Kernel parameters of a recorded launch, packed for cuLaunchKernelEx.

A recorded launch lists its parameters in the kernel's order, as Triton's launcher passes
them (engine/lean_record.py writes them): each is one of

    ["p", region, offset]        a pointer into a region of the engine's memory
    ["p0"]                       a null pointer
    ["i32", value] ...           an integer (i1 i8 i16 i32 i64 u1 u8 u16 u32 u64)
    ["fp32", value] ...          a float (fp16 bf16 fp32 fp64), packed as Triton packs it
    ["tma", region, offset, {...}]  a TMA descriptor (CUtensorMap, 128 bytes, by value)
    ["scratch", "global"|"profile"] the launch's scratch memory (null when it needs none)

All values live in one buffer that outlives the launches; `pointers` is the void* array
cuLaunchKernelEx reads them through.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# size and struct format of each scalar type
_INT = {
    "i1": (1, "<b"),
    "i8": (1, "<b"),
    "i16": (2, "<h"),
    "i32": (4, "<i"),
    "i64": (8, "<q"),
    "u1": (1, "<B"),
    "u8": (1, "<B"),
    "u16": (2, "<H"),
    "u32": (4, "<I"),
    "u64": (8, "<Q"),
}
TMA_BYTES = 128
TMA_ALIGN = 64  # cuTensorMapEncodeTiled wants a 64-byte aligned CUtensorMap


def pack_float(kind: str, value: float) -> bytes:
    if kind in ("fp32", "f32"):
        return struct.pack("<f", value)
    if kind == "fp16":
        return struct.pack("<e", value)
    if kind == "bf16":  # Triton truncates the float32 bits
        return struct.pack("<f", value)[2:]
    if kind == "fp64":
        return struct.pack("<d", value)
    raise ValueError(f"unknown float parameter type {kind!r}")


def param_size(arg: Sequence[Any]) -> tuple[int, int]:
    """(size, alignment) of a parameter in bytes."""
    kind = arg[0]
    if kind in ("p", "p0", "scratch"):
        return 8, 8
    if kind == "tma":
        return TMA_BYTES, TMA_ALIGN
    if kind in _INT:
        n = _INT[kind][0]
        return n, n
    n = len(pack_float(kind, 0.0))
    return n, n


@dataclass
class PackedParams:
    buffer: ctypes.Array  # keeps the values alive
    base: int  # address of the first (64-byte aligned) byte used
    offsets: list[int]  # each parameter's offset from base
    pointers: ctypes.Array  # void*[n]: base + offset of each parameter


def pack(
    args: Sequence[Sequence[Any]],
    pointer: Callable[[int, int], int],
    scratch: Callable[[str], int],
    encode_tma: Callable[[int, int, dict[str, Any]], None],
) -> PackedParams:
    """pointer(region, offset) -> address; scratch(kind) -> address or 0;
    encode_tma(out_address, address, spec) writes a CUtensorMap at out_address."""
    layout = []
    end = 0
    for a in args:
        size, align = param_size(a)
        off = -(-end // align) * align
        layout.append(off)
        end = off + size
    buf = ctypes.create_string_buffer(end + TMA_ALIGN)
    base = -(-ctypes.addressof(buf) // TMA_ALIGN) * TMA_ALIGN
    for a, off in zip(args, layout):
        kind, at = a[0], base + off
        if kind == "p":
            raw = struct.pack("<Q", pointer(int(a[1]), int(a[2])))
        elif kind == "p0":
            raw = struct.pack("<Q", 0)
        elif kind == "scratch":
            raw = struct.pack("<Q", scratch(str(a[1])))
        elif kind == "tma":
            encode_tma(at, pointer(int(a[1]), int(a[2])), a[3])
            continue
        elif kind in _INT:
            raw = struct.pack(_INT[kind][1], int(a[1]))
        else:
            raw = pack_float(kind, float(a[1]))
        ctypes.memmove(at, raw, len(raw))
    ptrs = (ctypes.c_void_p * max(len(args), 1))(*[base + off for off in layout])
    return PackedParams(buf, base, layout, ptrs)
