"""The torch-free runtime: replays an engine file's recorded launches through libcuda.

A fresh process that only serves an engine does not need torch (whose import alone takes
3-4 s on the H200 machines we measure on): an engine built with `--lean` carries, per input
shape, the list of its Triton kernel launches with every pointer rewritten as an offset into
regions of one memory arena (engine/lean_record.py). Loading it here means: check the file
(the same checks as ecoinfer.load_engine), check the GPU and driver against the engine's
fingerprint, load the carried cubins, allocate the arena and copy the weights in. A call
copies the inputs in, launches the kernels (the first call directly, later calls from a CUDA
graph captured on the second), and copies the outputs out.
"""

from __future__ import annotations

import base64
import ctypes
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecoinfer.engine.container import (
    EngineFileError,
    EngineMismatchError,
    read_container,
)
from ecoinfer.errors import (
    EcoinferError,
    IndexOutOfRangeError,
    InputDTypeError,
    InputShapeError,
    MissingInputError,
    UnknownInputError,
)
from ecoinfer.lean import cuda
from ecoinfer.lean.params import PackedParams, pack

LEAN_VERSION = 1  # the lean section's format (engine/lean_record.py writes it)
ARENA_ALIGN = 256  # region alignment in the arena (cuMemAlloc gives 256)

_NUMPY = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class LeanEngineError(EcoinferError):
    """The engine file cannot be run by the torch-free runtime."""


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version, as NVML reports it (e.g. 580.159.04)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return m.group(1) if m else None


@dataclass
class _Launch:
    config: cuda.LaunchConfig
    attrs: Any  # keeps the attribute array alive
    function: ctypes.c_void_p
    params: PackedParams
    name: str


@dataclass
class _Program:
    shapes: dict[str, tuple[int, ...]]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    launches: list[_Launch]
    graph: ctypes.c_void_p | None = None
    calls: int = 0
    graph_error: str | None = None


class LeanEngine:
    """An engine file's lean section, loaded on one GPU."""

    def __init__(self, path: str | os.PathLike, device: int = 0):
        self.path = str(path)
        self.warnings: list[str] = []
        box: dict[str, Any] = {}

        def start_gpu() -> None:  # CUDA's initialisation overlaps reading and hashing the file
            try:
                box["driver"] = cuda.Driver(device)
                box["stream"] = box["driver"].stream()
            except BaseException as e:  # noqa: BLE001  (re-raised below, in the caller)
                box["error"] = e

        t = threading.Thread(target=start_gpu, name="ecoinfer-lean-init")
        t.start()
        try:
            header, raw, table = read_container(path)
        finally:
            t.join()
        if "error" in box:
            raise box["error"]
        self.driver: cuda.Driver = box["driver"]
        self.driver.make_current()  # the context was made current in the set-up thread only
        self.stream = box["stream"]
        self._raw = raw
        lean = header.get("lean")
        if not lean:
            raise LeanEngineError(
                f"{path}: this engine file has no lean section (its launches were not recorded); "
                "rebuild it with `ecoinfer build ... --lean`, or load it with ecoinfer.load_engine"
            )
        if lean.get("version") != LEAN_VERSION:
            raise LeanEngineError(
                f"{path}: lean section version {lean.get('version')}, this runtime reads version "
                f"{LEAN_VERSION}; rebuild the engine with this ecoinfer"
            )
        self._check_fingerprint(header.get("fingerprint") or {})
        self.index_inputs: dict[str, int] = dict(lean.get("index_inputs") or {})
        self._functions = self._load_kernels(lean["kernels"], header.get("triton_binaries") or {})
        self._bases = self._allocate(lean, table)
        self._scratch = self._scratch_buffers(lean)
        self.programs = [self._program(p, lean["kernels"]) for p in lean["programs"]]
        self.driver.synchronize(self.stream)  # the weights are in place
        self._raw = bytearray()  # the file's bytes are on the GPU now
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    def _check_fingerprint(self, built: dict[str, Any]) -> None:
        drv = self.driver
        here = {
            "device_name": drv.name(),
            "compute_capability": drv.capability(),
            "driver": driver_version(),
        }
        diff = [
            f"{k}: engine {built.get(k)!r}, this machine {v!r}"
            for k, v in here.items()
            if built.get(k) != v and not (k == "driver" and v is None)
        ]
        if diff:
            raise EngineMismatchError(
                f"{self.path}: this engine was built for another GPU or driver ({'; '.join(diff)}); "
                f"rebuild it here with `ecoinfer build ... --lean -o {self.path}`"
            )

    def _load_kernels(self, kernels: dict, carried: dict) -> dict[str, ctypes.c_void_p]:
        out = {}
        for key, k in kernels.items():
            if "cubin_b64" in k:
                data = k["cubin_b64"]
            else:
                entry, filename = k["cubin"]
                data = (carried.get(entry) or {}).get(filename)
            if data is None:
                raise EngineFileError(
                    f"{self.path}: the lean section names kernel {k['name']}, whose cubin the "
                    "file does not carry; rebuild the engine"
                )
            out[key] = self.driver.load_function(base64.b64decode(data), k["name"], k["shared"])
        return out

    def _allocate(self, lean: dict, table: dict) -> list[int]:
        """One arena for every region; weights and constants copied in (asynchronously)."""
        regions = lean["regions"]
        offsets, end = [], 0
        for r in regions:
            end = -(-end // ARENA_ALIGN) * ARENA_ALIGN
            offsets.append(end)
            end += int(r["bytes"])
        self._arena = self.driver.alloc(end)
        self.arena_bytes = end
        self._sizes = [int(r["bytes"]) for r in regions]
        bases = [self._arena + o for o in offsets]
        host = ctypes.addressof((ctypes.c_char * len(self._raw)).from_buffer(self._raw))
        blob = table.get(lean["blob"]) if lean.get("blob") else None
        for r, base in zip(regions, bases):
            if r["kind"] == "weight":
                got = table.get(r["tensor"])
                if got is None or got[3] - got[2] != r["bytes"]:
                    raise EngineFileError(
                        f"{self.path}: the lean section's weight {r['tensor']} is missing or of "
                        "another size in the file; rebuild the engine"
                    )
                self.driver.upload(base, host + got[2], r["bytes"], self.stream)
            elif r["kind"] == "const":
                if blob is None or not 0 <= r["blob_offset"] <= blob[3] - blob[2] - r["bytes"]:
                    raise EngineFileError(
                        f"{self.path}: the lean blob is damaged; rebuild the engine"
                    )
                self.driver.upload(base, host + blob[2] + r["blob_offset"], r["bytes"], self.stream)
        return bases

    def _scratch_buffers(self, lean: dict) -> dict[str, int]:
        need = {"global": 0, "profile": 0}
        for p in lean["programs"]:
            for ln in p["launches"]:
                k = lean["kernels"][ln["kernel"]]
                blocks = ln["grid"][0] * ln["grid"][1] * ln["grid"][2] * k["num_ctas"]
                need["global"] = max(need["global"], blocks * k["global_scratch_size"])
                need["profile"] = max(need["profile"], blocks * k["profile_scratch_size"])
        return {kind: self.driver.alloc(n) if n else 0 for kind, n in need.items()}

    def _program(self, p: dict, kernels: dict) -> _Program:
        bases, extents = self._bases, self._sizes

        def pointer(region: int, offset: int) -> int:
            # a pointer outside its region: a damaged or crafted file (the checksum guards
            # against damage only); refused before any kernel is launched
            if not (0 <= region < len(bases) and 0 <= offset <= extents[region]):
                raise EngineFileError(
                    f"{self.path}: the lean section points outside its memory regions "
                    f"(region {region}, offset {offset}); rebuild the engine"
                )
            return bases[region] + offset

        def encode(out: int, address: int, spec: dict) -> None:
            self.driver.encode_tma(
                out,
                spec["dtype"],
                address,
                spec["shape"],
                spec["strides"],
                spec["block"],
                spec["elem_size"],
                spec["swizzle"],
                spec["nan_padding"],
            )

        for what, specs in (("input", p["inputs"]), ("output", p["outputs"])):
            for name, spec in specs.items():
                if spec["dtype"] not in _NUMPY:
                    raise LeanEngineError(
                        f"{self.path}: {what} '{name}' is {spec['dtype']}, which numpy cannot "
                        "hold; run this engine with ecoinfer.load_engine"
                    )
                # the bytes each call copies in or out lie inside the region
                item = np.dtype(_NUMPY[spec["dtype"]]).itemsize
                shape = spec["shape"]
                strides = spec.get("strides") or [0] * len(shape)
                if what == "input":
                    span = item * math.prod(shape)
                else:
                    span = (
                        0
                        if 0 in shape
                        else item * (1 + sum((d - 1) * st for d, st in zip(shape, strides)))
                    )
                pointer(spec["region"], spec.get("offset", 0) + span)
                if min(strides, default=0) < 0:
                    pointer(-1, 0)  # negative strides: refused as out of bounds
        launches = []
        for ln in p["launches"]:
            k = kernels[ln["kernel"]]
            sizes = {"global": k["global_scratch_size"], "profile": k["profile_scratch_size"]}

            def scratch(kind: str, _s=sizes) -> int:  # noqa: ANN001
                return self._scratch[kind] if _s[kind] else 0

            for prm in ln["params"]:
                if prm[0] == "tma":  # the whole tensor a TMA descriptor covers lies in its region
                    sp = prm[3]
                    extent = 1 + sum((d - 1) * st for d, st in zip(sp["shape"], sp["strides"]))
                    pointer(prm[1], prm[2] + sp["elem_size"] * extent)
            params = pack(ln["params"], pointer, scratch, encode)
            attrs = []
            if k["launch_pdl"]:
                attrs.append(cuda.attribute(cuda.LAUNCH_ATTR_PDL, 1))
            if k["launch_cooperative_grid"]:
                attrs.append(cuda.attribute(cuda.LAUNCH_ATTR_COOPERATIVE, 1))
            if k["num_ctas"] != 1:
                attrs.append(
                    cuda.attribute(cuda.LAUNCH_ATTR_CLUSTER_DIMENSION, k["num_ctas"], 1, 1)
                )
                attrs.append(
                    cuda.attribute(
                        cuda.LAUNCH_ATTR_CLUSTER_SCHEDULING, cuda.CLUSTER_SCHEDULING_SPREAD
                    )
                )
            arr = (cuda.LaunchAttribute * max(len(attrs), 1))(*attrs)
            gx, gy, gz = ln["grid"]
            cfg = cuda.LaunchConfig(
                gx * k["num_ctas"],
                gy,
                gz,
                32 * k["num_warps"],
                1,
                1,
                k["shared"],
                self.stream.value,
                arr,
                len(attrs),
            )
            launches.append(_Launch(cfg, arr, self._functions[ln["kernel"]], params, k["name"]))
        return _Program(
            {k: tuple(v) for k, v in p["shapes"].items()}, p["inputs"], p["outputs"], launches
        )

    def __enter__(self) -> LeanEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the GPU memory (the engine cannot run afterwards)."""
        for ptr in (self._arena, *self._scratch.values()):
            if ptr:
                self.driver.free(ptr)
        self._arena, self._scratch, self.programs = 0, {}, []

    # ------------------------------------------------------------------ running
    @property
    def input_names(self) -> list[str]:
        return list(self.programs[0].inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.programs[0].outputs)

    def _choose(self, feeds: Mapping[str, Any]) -> tuple[_Program, dict[str, np.ndarray]]:
        first = self.programs[0]
        for name in feeds:
            if name not in first.inputs:
                raise UnknownInputError(
                    f"{self.path}: the engine has no input '{name}' (inputs: {', '.join(first.inputs)})"
                )
        for name, spec in first.inputs.items():
            if name not in feeds:
                raise MissingInputError(
                    f"{self.path}: input '{name}' ({spec['dtype']}) was not given; the engine needs "
                    + ", ".join(f"{n}: {s['dtype']}" for n, s in first.inputs.items())
                )
        arrays = {}
        for name, spec in first.inputs.items():
            a = np.asarray(feeds[name])
            want = np.dtype(_NUMPY[spec["dtype"]])
            if a.dtype != want:
                raise InputDTypeError(
                    f"{self.path}: input '{name}': expected {spec['dtype']} but got {a.dtype}; "
                    f"convert it yourself (e.g. array.astype('{spec['dtype']}')), ecoinfer never "
                    "casts inputs silently"
                )
            arrays[name] = np.ascontiguousarray(a)
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        for p in self.programs:
            if all(shapes[k] == tuple(s["shape"]) for k, s in p.inputs.items()):
                break
        else:
            recorded = "; ".join(
                ", ".join(f"{k} {list(s['shape'])}" for k, s in p.inputs.items())
                for p in self.programs
            )
            raise InputShapeError(
                f"{self.path}: the torch-free runtime runs the shapes it recorded ({recorded}), "
                f"not {', '.join(f'{k} {list(v)}' for k, v in shapes.items())}; use "
                "ecoinfer.load_engine for other shapes within the profiles"
            )
        for name, n in self.index_inputs.items():
            a = arrays.get(name)
            if a is not None and a.size and (a.min() < -n or a.max() >= n):
                bad = a.max() if a.max() >= n else a.min()
                raise IndexOutOfRangeError(
                    f"{self.path}: input '{name}' holds index {bad}, outside the table it indexes "
                    f"(valid: [{-n}, {n - 1}])"
                )
        return p, arrays

    def _launch_all(self, prog: _Program) -> None:
        drv = self.driver
        for ln in prog.launches:
            drv.launch(ln.config, ln.function, ln.params.pointers, ln.name)

    def _capture(self, prog: _Program) -> None:
        drv = self.driver
        try:
            drv.begin_capture(self.stream)
            try:
                self._launch_all(prog)
            finally:
                exe = drv.end_capture(self.stream)
            prog.graph = exe
        except EcoinferError as e:  # the launches still run directly
            prog.graph_error = str(e)
            self.warnings.append(f"CUDA graph capture failed, launching directly: {e}")

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Outputs as numpy arrays; inputs must match a recorded shape and dtype exactly."""
        prog, arrays = self._choose(feeds)
        drv = self.driver
        with self._lock:
            drv.make_current()
            for name, a in arrays.items():
                drv.upload(
                    self._bases[prog.inputs[name]["region"]], a.ctypes.data, a.nbytes, self.stream
                )
            if prog.graph is None and prog.calls >= 1 and prog.graph_error is None:
                self._capture(prog)
            if prog.graph is not None:
                drv.graph_launch(prog.graph, self.stream)
            else:
                self._launch_all(prog)
            prog.calls += 1
            outs = {}
            for name, o in prog.outputs.items():
                dt = np.dtype(_NUMPY[o["dtype"]])
                shape, strides = o["shape"], o["strides"]
                span = 1 + sum((d - 1) * s for d, s in zip(shape, strides) if d > 0)
                if any(d == 0 for d in shape):
                    outs[name] = np.empty(shape, dt)
                    continue
                buf = np.empty(span, dt)
                drv.download(
                    buf.ctypes.data, self._bases[o["region"]] + o["offset"], buf.nbytes, self.stream
                )
                outs[name] = (buf, shape, strides)
            drv.synchronize(self.stream)
        result = {}
        for name, v in outs.items():
            if isinstance(v, np.ndarray):
                result[name] = v
                continue
            buf, shape, strides = v
            view = np.lib.stride_tricks.as_strided(
                buf, shape, [s * buf.itemsize for s in strides], writeable=False
            )
            result[name] = np.ascontiguousarray(view)
        return result


def load(path: str | os.PathLike, device: int = 0) -> LeanEngine:
    """Load an engine file's lean section on GPU `device` (no torch)."""
    return LeanEngine(path, device)
