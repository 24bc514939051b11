"""The engine file's container, read without torch: magic, header, checksum, tensor table.

    b"ECOINFER-ENGINE\\n" | header length (8 bytes, little endian) | header (UTF-8 JSON) | weights

engine/format.py writes the file and turns its tensors into torch tensors; this module only
checks the bytes and parses the JSON, so the torch-free runtime (ecoinfer/lean) reads the
same files with the same checks and messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from ecoinfer.errors import EcoinferError

MAGIC = b"ECOINFER-ENGINE\n"
FORMAT_VERSION = 1


class EngineFileError(EcoinferError):
    """The engine file is missing, truncated, altered, or of another format or version."""


class EngineMismatchError(EcoinferError):
    """The engine was built for another GPU or software stack than this machine's."""


def canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


Table = dict[str, tuple[str, list[int], int, int]]  # name -> (dtype, shape, begin, end)


def read_container(path: str | os.PathLike) -> tuple[dict[str, Any], bytearray, Table]:
    """(header without its sha256, the whole file, its tensor table: tensor_table) of a
    verified engine file. The file is read once into one buffer; the checksum runs over a
    view of it (hashlib releases the GIL, so another thread can set up the GPU meanwhile)."""
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise EngineFileError(
            f"{label}: no such engine file; build one with `ecoinfer build MODEL.onnx -o {label}`"
        )
    raw = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        got_n = f.readinto(raw)
    del raw[got_n:]
    if len(raw) < len(MAGIC) and len(raw) >= 4 and MAGIC.startswith(bytes(raw)):
        raise EngineFileError(
            f"{label}: the engine file is truncated; rebuild it with `ecoinfer build`"
        )
    if not raw.startswith(MAGIC):
        raise EngineFileError(
            f"{label}: not an ecoinfer engine file (wrong magic bytes); build one with `ecoinfer build`"
        )
    if len(raw) < len(MAGIC) + 8:
        raise EngineFileError(
            f"{label}: the engine file is truncated; rebuild it with `ecoinfer build`"
        )
    (n,) = struct.unpack_from("<Q", raw, len(MAGIC))
    start = len(MAGIC) + 8
    if start + n > len(raw):
        raise EngineFileError(
            f"{label}: the engine file is truncated (header cut off); rebuild it with `ecoinfer build`"
        )
    try:
        header = json.loads(bytes(raw[start : start + n]))
    except ValueError:
        raise EngineFileError(
            f"{label}: the engine header is corrupted; rebuild it with `ecoinfer build`"
        ) from None
    if not isinstance(header, dict):
        raise EngineFileError(f"{label}: the engine header is corrupted; rebuild it")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineFileError(
            f"{label}: engine format version {version}, this ecoinfer reads version {FORMAT_VERSION}; "
            "rebuild it with this ecoinfer (`ecoinfer build`)"
        )
    want = header.pop("sha256", None)
    digest = hashlib.sha256(canonical(header))
    digest.update(memoryview(raw)[start + n :])
    if want != digest.hexdigest():
        raise EngineFileError(
            f"{label}: checksum mismatch: the engine file is truncated or was modified after it was "
            "built; rebuild it with `ecoinfer build`"
        )
    try:
        table = tensor_table(raw, start + n)
    except Exception as e:  # noqa: BLE001
        raise EngineFileError(
            f"{label}: the weights section cannot be read ({type(e).__name__}: {e}); rebuild it"
        ) from None
    return header, raw, table


# safetensors dtype names (https://github.com/huggingface/safetensors, format section) and
# their sizes in bytes
ST_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def tensor_table(buf: bytearray, offset: int) -> Table:
    """name -> (dtype, shape, begin, end) of the safetensors section at buf[offset:], begin
    and end absolute in buf. Every entry is checked against the section's bounds: a file can
    carry a valid checksum and still be hostile (the checksum guards against damage, not
    against a forger)."""
    if offset == len(buf):
        return {}
    (hn,) = struct.unpack_from("<Q", buf, offset)
    data0 = offset + 8 + hn
    if data0 > len(buf):
        raise ValueError("safetensors header runs past the end of the file")
    meta = json.loads(bytes(buf[offset + 8 : data0]))
    size = len(buf) - data0
    out: Table = {}
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in ST_ITEMSIZE:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(v) for v in info["data_offsets"])
        count = 1
        for d in shape:
            if d < 0:
                raise ValueError(f"tensor {name}: negative dimension")
            count *= d
        if not 0 <= begin <= end <= size or end - begin != count * ST_ITEMSIZE[dtype]:
            raise ValueError(f"tensor {name}: data offsets out of bounds")
        out[name] = (dtype, shape, data0 + begin, data0 + end)
    return out
