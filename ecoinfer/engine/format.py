"""The .eng file: a JSON header and the weights in safetensors, with a SHA-256 over both.

    b"ECOINFER-ENGINE\\n" | header length (8 bytes, little endian) | header (UTF-8 JSON) | weights

The header holds the format version, the fingerprint of the GPU and software stack the engine
was built for, the shape profiles, the plan (graph, chosen tactic and precision per layer)
and the build report. The SHA-256 covers the header (without its own "sha256" field) and the
weights: a truncated or altered file is refused. Nothing in the file is executable: JSON and
safetensors only, no pickle.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import torch

from ecoinfer.engine.container import (  # noqa: F401  (EngineMismatchError: re-exported)
    FORMAT_VERSION,
    MAGIC,
    EngineFileError,
    EngineMismatchError,
    Table,
    read_container,
)
from ecoinfer.engine.container import canonical as _canonical

_ALIGN = 64  # the weights section's alignment in the file (read_engine accepts any)


def write_engine(
    path: str | os.PathLike, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    from safetensors.torch import save  # noqa: PLC0415

    path = Path(path)
    seen: set[int] = set()
    flat = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing storage (CSE may share a constant): copy those
        flat[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    blob = save(flat) if flat else b""
    body = dict(header, format_version=FORMAT_VERSION)
    body.pop("sha256", None)
    digest = hashlib.sha256(_canonical(body) + blob).hexdigest()
    data = _canonical(dict(body, sha256=digest))
    # pad the header (JSON allows trailing spaces) so the weights section starts on a 64-byte
    # boundary: safetensors pads its own header to 8 bytes, so every tensor then sits at an
    # offset its dtype can be viewed at, and loading takes views instead of copies
    data += b" " * (-(len(MAGIC) + 8 + len(data)) % _ALIGN)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(data)))
        f.write(data)
        f.write(blob)
    os.replace(tmp, path)  # never leave a half-written engine under the real name
    return path


def read_engine(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and weights (on the CPU) of a verified engine file.

    The file is read once into one buffer; the checksum runs over views of it and the weights
    are views into it too (no copy of the weights before they move to the device)."""
    header, raw, table = read_container(path)
    return header, _safetensors_views(raw, table)


# safetensors dtype names (https://github.com/huggingface/safetensors, format section)
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _safetensors_views(buf: bytearray, table: Table) -> dict[str, torch.Tensor]:
    """The tensors of the weights section (container.tensor_table checked their bounds), as
    views into buf."""
    out: dict[str, torch.Tensor] = {}
    for name, (dt, shape, begin, end) in table.items():
        dtype = _ST_DTYPES[dt]
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = (end - begin) // itemsize
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        if begin % itemsize:  # unaligned: copy (torch views need aligned storage)
            t = torch.frombuffer(bytearray(buf[begin:end]), dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype, count=count, offset=begin)
        out[name] = t.reshape(shape)
    return out


def is_engine_file(path: str | os.PathLike) -> bool:
    """Starts with the engine magic; a file cut inside the magic counts too, so that loading
    it reports a truncated engine rather than, say, a malformed ONNX model."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError:
        return False
    return head == MAGIC or (len(head) >= 4 and MAGIC.startswith(head))
