"""Public Python API: ecoinfer.load(...) -> Model, Model.run(feeds) -> named numpy arrays."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch

from ecoinfer.errors import (
    IndexOutOfRangeError,  # noqa: F401  (re-exported for users catching it)
    InputDTypeError,
    InputShapeError,
    MissingInputError,
    UnknownInputError,
)
from ecoinfer.ir import dtypes
from ecoinfer.ir.graph import Dim, Graph, Value


class Model:
    """An imported model: its IR graph and a reference runner (CPU, or CUDA when asked)."""

    def __init__(self, graph: Graph, source: str = "<model>"):
        self.graph = graph
        self.source = source
        self._runners: dict[str, Any] = {}

    @property
    def inputs(self) -> list[Value]:
        return self.graph.inputs

    @property
    def outputs(self) -> list[Value]:
        return [self.graph.values.get(o.name, o) for o in self.graph.outputs]

    def run(
        self,
        feeds: Mapping[str, np.ndarray | torch.Tensor],
        device: str | None = None,
        as_torch: bool = False,
        profile: dict[str, list[float]] | None = None,
    ) -> dict[str, np.ndarray | torch.Tensor]:
        """Run the model. Inputs are checked against the model (names, dtypes, shapes) and never cast."""
        tensors = validate_inputs(self.graph, feeds, self.source)
        dev = device or ("cuda" if _on_cuda(tensors) else "cpu")
        runner = self._runners.get(dev)
        if runner is None:
            from ecoinfer.kernels.runner import ReferenceRunner  # noqa: PLC0415

            runner = self._runners[dev] = ReferenceRunner(self.graph, dev)
        with torch.inference_mode():
            out = runner.run(tensors, profile)
        if as_torch:
            return out
        return {k: dtypes.torch_to_numpy(v) for k, v in out.items()}


def _on_cuda(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(t.is_cuda for t in tensors.values())


def load(
    src: str | os.PathLike | bytes | onnx.ModelProto | torch.nn.Module, *args: Any, **kw: Any
) -> Model:
    """Import an ONNX file/bytes/proto, or an nn.Module (with example inputs) via torch.onnx."""
    if isinstance(src, torch.nn.Module):
        from ecoinfer.frontend.torch import import_module  # noqa: PLC0415

        return Model(import_module(src, *args, **kw), type(src).__name__)
    from ecoinfer.frontend.onnx import import_onnx  # noqa: PLC0415

    label = str(src) if isinstance(src, str | os.PathLike) else "<model>"
    return Model(import_onnx(src), label)


def build(
    model: str | os.PathLike | Model | Graph,
    output: str | os.PathLike | None = None,
    config: Any = None,
    **options: Any,
) -> Any:
    """Build an engine (ecoinfer.engine.runtime.Engine), as `ecoinfer build` does, and save it
    to `output` when given. Options are BuildConfig's fields, e.g.
    ``ecoinfer.build("bert.onnx", "bert.eng", precision="fp16", device="cuda",
    shapes={"input_ids": (64, 128), "attention_mask": (64, 128)})``; `shapes` pins one
    profile (min = opt = max), `profiles` takes ShapeProfile or (min, opt, max) dicts."""
    import dataclasses  # noqa: PLC0415

    from ecoinfer.engine.builder import BuildConfig  # noqa: PLC0415
    from ecoinfer.engine.builder import build as build_engine  # noqa: PLC0415
    from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415
    from ecoinfer.errors import InputError  # noqa: PLC0415

    if config is not None and not isinstance(config, BuildConfig):
        raise InputError("ecoinfer.build: config must be an ecoinfer.BuildConfig")
    shapes = options.pop("shapes", None)
    if shapes is not None:
        if options.get("profiles"):
            raise InputError("ecoinfer.build: give shapes or profiles, not both")
        fixed = {k: tuple(v) for k, v in shapes.items()}
        options["profiles"] = [ShapeProfile(fixed, dict(fixed), dict(fixed))]
    if "profiles" in options:
        options["profiles"] = [
            p if isinstance(p, ShapeProfile) else ShapeProfile(*p) for p in options["profiles"]
        ]
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(
            f"ecoinfer.build: unknown option {unknown[0]!r} (options: shapes, "
            f"{', '.join(sorted(fields))})"
        )
    cfg = dataclasses.replace(config or BuildConfig(), **options)
    src_file = (
        model.source
        if isinstance(model, Model)
        else os.fspath(model)
        if isinstance(model, str | os.PathLike)
        else ""
    )
    from ecoinfer.commands.arg_checks import same_file  # noqa: PLC0415

    if output is not None and os.path.isfile(src_file) and same_file(output, src_file):
        raise InputError(f"ecoinfer.build: output {output} is the input model")
    src = model.graph if isinstance(model, Model) else model
    engine = build_engine(src, cfg)
    if isinstance(model, Model) and os.path.isfile(model.source):
        engine.source = engine.name = model.source  # the file a rebuild hint names
    if output is not None:
        engine.save(str(output))
    return engine


def validate_inputs(
    graph: Graph, feeds: Mapping[str, np.ndarray | torch.Tensor], source: str = "<model>"
) -> dict[str, torch.Tensor]:
    """Turn user feeds into torch tensors, exactly as given, or raise a clear InputError."""
    expected = {v.name: v for v in graph.inputs}
    for name in feeds:
        if name not in expected:
            near = difflib.get_close_matches(name, list(expected), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UnknownInputError(
                f"{source}: the model has no input '{name}'{hint} "
                f"(inputs: {', '.join(expected) or 'none'})"
            )
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise MissingInputError(
            f"{source}: input '{missing[0]}' ({expected[missing[0]].type_str()}) was not given; "
            f"the model needs {', '.join(f'{n}: {v.type_str()}' for n, v in expected.items())}"
        )
    out: dict[str, torch.Tensor] = {}
    bound: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, where it was bound)
    for name, v in expected.items():
        x = feeds[name]
        where = f"{source}: input '{name}'"
        if isinstance(x, torch.Tensor):
            t = x
            got = dtypes.from_torch(t.dtype)
        else:
            arr = np.asarray(x)
            if arr.dtype == object or arr.dtype.kind in "USO":
                raise InputDTypeError(f"{where}: got an array of {arr.dtype}, expected {v.dtype}")
            got = dtypes.from_numpy(arr.dtype, where)
            t = None
        if v.dtype is not None and got != v.dtype:
            raise InputDTypeError(
                f"{where}: expected {v.dtype} but got {got}; convert it yourself "
                f"(e.g. array.astype('{v.dtype}')), ecoinfer never casts inputs silently"
            )
        shape = tuple(x.shape)
        if v.shape is not None:
            if len(shape) != len(v.shape):
                raise InputShapeError(
                    f"{where}: expected rank {len(v.shape)} {_fmt(v.shape)} but got rank "
                    f"{len(shape)} {list(shape)}"
                )
            for k, (want, have) in enumerate(zip(v.shape, shape)):
                if isinstance(want, int) and want != have:
                    raise InputShapeError(
                        f"{where}: dimension {k} must be {want} (model shape {_fmt(v.shape)}) "
                        f"but is {have} (given {list(shape)})"
                    )
                if isinstance(want, str):
                    if want in bound and bound[want][0] != have:
                        size, first = bound[want]
                        raise InputShapeError(
                            f"{where}: dimension {k} ('{want}') is {have} but {first} set "
                            f"'{want}' = {size}; inputs sharing a dimension name must agree"
                        )
                    bound.setdefault(want, (have, f"input '{name}'"))
        out[name] = t if t is not None else dtypes.numpy_to_torch(arr, where)
    return out


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
