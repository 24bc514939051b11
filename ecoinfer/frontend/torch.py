"""nn.Module -> ONNX (torch.onnx.export) -> ecoinfer IR.

Both torch exporters are supported: the torch.export-based one (dynamo=True, needs onnxscript)
and the legacy TorchScript one (dynamo=False). The model goes through a temporary ONNX file
so that big models (external data) take the same path as small ones.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from ecoinfer.errors import EcoinferError, ModelLoadError
from ecoinfer.frontend.onnx import import_onnx
from ecoinfer.ir.graph import Graph

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]


def import_module(
    module: torch.nn.Module,
    example_inputs: Any = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    dynamic_shapes: Any = None,
    dynamo: bool = True,
    opset: int | None = None,
) -> Graph:
    """Export `module` with torch.onnx.export (see export_module) and import the ONNX model."""
    label = type(module).__name__
    exporter = _exporter_name(dynamo)
    with tempfile.TemporaryDirectory(prefix="ecoinfer_export_") as tmp:
        path = export_module(
            module,
            example_inputs,
            Path(tmp) / "model.onnx",
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            dynamic_shapes=dynamic_shapes,
            dynamo=dynamo,
            opset=opset,
        )
        model = onnx.load(str(path), load_external_data=True)
    try:
        graph = import_onnx(model)
    except EcoinferError as e:
        # keep the ecoinfer error type; name the module, not a temporary file
        where = f"{label} (exported with the {exporter} exporter)"
        raise type(e)(str(e).replace("<model>", where, 1)) from None
    graph.metadata.setdefault("source", f"torch module {label} ({exporter} exporter)")
    return graph


def export_module(
    module: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    dynamic_shapes: Any = None,
    dynamo: bool = True,
    opset: int | None = None,
) -> Path:
    """Export `module` to an ONNX file at `path`; returns the path.

    example_inputs: a tensor, a tuple/list of positional tensors, or a dict of keyword tensors
    (e.g. a tokenizer's output for a Hugging Face model).
    input_names: default forward()'s parameter names (dict keys for keyword inputs).
    output_names: default "output" for one tensor, else the dict/ModelOutput keys or "output_<i>".
    dynamic_axes: ONNX-style {input_name: {axis: dim_name}}; {} exports static shapes. Default:
    axis 0 of every input is "batch" and axis 1 of 2-D integer inputs (token ids, masks) is
    "seq"; if the exporter rejects those, the export falls back to static shapes with a warning.
    dynamic_shapes: torch.export-style spec, passed as is to the dynamo exporter.
    Errors of either exporter become a one-line ModelLoadError.
    """
    label = type(module).__name__
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{label}: import_module takes a torch.nn.Module")
    if example_inputs is None:
        raise ModelLoadError(
            f"{label}: example inputs are needed to export a module, e.g. "
            "ecoinfer.load(module, (torch.randn(1, 3, 224, 224),))"
        )
    if dynamic_shapes is not None and not dynamo:
        raise ModelLoadError(
            f"{label}: dynamic_shapes is for the dynamo exporter; with dynamo=False give "
            "dynamic_axes={input_name: {axis: dim_name}}"
        )
    args, kwargs = _split_inputs(example_inputs)
    names = list(input_names) if input_names is not None else _input_names(module, args, kwargs)
    if len(names) != len(args) + len(kwargs):
        raise ModelLoadError(
            f"{label}: {len(names)} input names given for {len(args) + len(kwargs)} example inputs"
        )
    tensors = dict(zip(names, [*args, *kwargs.values()]))
    user_dynamic = dynamic_axes is not None or dynamic_shapes is not None
    axes = dict(dynamic_axes) if dynamic_axes is not None else _default_axes(tensors)
    if output_names is None:
        output_names = _output_names(module, args, kwargs)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = _exporter_name(dynamo)
    try:
        _export(module, args, kwargs, path, names, axes, dynamic_shapes, dynamo, opset)
    except Exception as e:  # noqa: BLE001
        if user_dynamic or not axes:
            raise _export_error(label, exporter, dynamo, e) from e
        # the default dynamic batch/seq axes may clash with the model's code: go static
        warnings.warn(
            f"{label}: {exporter} export with dynamic axes failed ({_first_line(e)}); "
            "exporting with static shapes",
            stacklevel=2,
        )
        try:
            _export(module, args, kwargs, path, names, {}, None, dynamo, opset)
        except Exception as e2:  # noqa: BLE001
            raise _export_error(label, exporter, dynamo, e2) from e2
    model = onnx.load(str(path), load_external_data=True)
    renamed = _rename_outputs(model, output_names)
    if _tidy_dims(model) or renamed:
        _save(model, path)
    return path


def _tidy_dims(model: onnx.ModelProto) -> bool:
    """Forget exporter-made dim names (TorchScript's "MatMul555_dim_0") that no input declares,
    so shape inference derives them from the inputs' "batch"/"seq" instead."""
    g = model.graph
    known = {d.dim_param for i in g.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    changed = False
    for vi in [*g.output, *g.value_info]:
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param not in known:
                d.ClearField("dim_param")
                changed = True
    return changed


def _exporter_name(dynamo: bool) -> str:
    return "dynamo (torch.export)" if dynamo else "TorchScript"


def _save(model: onnx.ModelProto, path: Path) -> None:
    # protobuf cannot hold more than 2 GiB: big models keep their weights in one data file
    for f in path.parent.glob(path.name + "*.data"):
        f.unlink()
    big = model.ByteSize() > 1_800_000_000 if _size_known(model) else True
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=big,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )


def _size_known(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
    except Exception:  # noqa: BLE001  (ByteSize fails past 2 GiB on some protobuf builds)
        return False
    return True


# ---------------------------------------------------------------------------- inputs
def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):  # e.g. a tokenizer's BatchEncoding
        return (), {str(k): v for k, v in example_inputs.items()}
    if isinstance(example_inputs, list | tuple):
        return tuple(example_inputs), {}
    raise ModelLoadError(
        f"example inputs must be a tensor, a tuple of tensors or a dict of tensors, "
        f"not {type(example_inputs).__name__}"
    )


def _input_names(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str]:
    # the forward() parameter names, which both exporters would otherwise lose for positionals
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    names = [params[i] if i < len(params) else f"input_{i}" for i in range(len(args))]
    return names + list(kwargs)


def _default_axes(tensors: Mapping[str, Any]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            continue
        ax = {0: "batch"}
        if t.dim() == 2 and not t.dtype.is_floating_point and t.dtype != torch.bool:
            ax[1] = "seq"  # token ids, attention masks, position ids
        axes[name] = ax
    return axes


def _output_names(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str] | None:
    """Names from the module's output structure: "output", "output_<i>" or dict/ModelOutput keys."""
    import torch.utils._pytree as pytree  # noqa: PLC0415

    try:
        with torch.no_grad(), _eval_mode(module):
            out = module(*args, **kwargs)
        leaves = pytree.tree_flatten_with_path(out)[0]
    except Exception:  # noqa: BLE001  (the exporter will report the real problem)
        return None
    if len(leaves) == 1 and isinstance(out, torch.Tensor):
        return ["output"]
    names: list[str] = []
    for i, (path, _) in enumerate(leaves):
        keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        keys = [k for k in keys if k and not k.isdigit()]
        names.append("_".join(keys) if keys else f"output_{i}")
    return names if len(set(names)) == len(names) else [f"output_{i}" for i in range(len(names))]


def _rename_outputs(model: onnx.ModelProto, names: Sequence[str] | None) -> bool:
    """Give the graph outputs readable names; returns whether anything changed."""
    g = model.graph
    if not names or len(names) != len(g.output):
        return False
    taken = {i.name for i in g.input} | {t.name for t in g.initializer}
    taken |= {o for n in g.node for o in n.output}
    old = [o.name for o in g.output]
    # skip outputs that are also inputs/weights or appear twice: renaming them is ambiguous
    if len(set(old)) != len(old) or any(
        o in {i.name for i in g.input} | {t.name for t in g.initializer} for o in old
    ):
        return False
    mapping = {o: n for o, n in zip(old, names) if o != n}
    if not mapping or any(n in taken and n not in mapping for n in mapping.values()):
        return False
    for node in g.node:
        node.input[:] = [mapping.get(x, x) for x in node.input]
        node.output[:] = [mapping.get(x, x) for x in node.output]
    for vi in [*g.output, *g.value_info]:
        vi.name = mapping.get(vi.name, vi.name)
    return True


# ---------------------------------------------------------------------------- export
def _export(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: Path,
    names: list[str],
    axes: Mapping[str, Any],
    dynamic_shapes: Any,
    dynamo: bool,
    opset: int | None,
) -> None:
    kw: dict[str, Any] = {"input_names": names, "dynamo": dynamo}
    if opset is not None:
        kw["opset_version"] = opset
    if dynamo:
        if dynamic_shapes is not None:
            kw["dynamic_shapes"] = dynamic_shapes
        elif axes:
            kw["dynamic_shapes"] = _axes_to_shapes(module, args, kwargs, names, axes)
        kw["external_data"] = True
        kw["verbose"] = False
    else:
        if axes:
            kw["dynamic_axes"] = {
                k: dict(v) if isinstance(v, Mapping) else list(v) for k, v in axes.items()
            }
        kw["do_constant_folding"] = True
    kw = _supported_kwargs(kw)
    if kwargs and not dynamo:
        # the TorchScript exporter mishandles keyword inputs: call through positionals
        module = _KwargsAdapter(module, list(kwargs), len(args))
        args, kwargs = (*args, *kwargs.values()), {}
    with _eval_mode(module), _quiet(), torch.no_grad():
        if kwargs:
            torch.onnx.export(module, args, str(path), kwargs=kwargs, **kw)
        else:
            torch.onnx.export(module, args, str(path), **kw)
    if not path.exists():
        raise RuntimeError("torch.onnx.export wrote no file")


class _KwargsAdapter(torch.nn.Module):
    """forward(*positionals, *keyword values) -> module(*positionals, **keywords)."""

    def __init__(self, module: torch.nn.Module, keys: list[str], n_args: int):
        super().__init__()
        self.module = module
        self.keys = keys
        self.n_args = n_args

    def forward(self, *xs: Any) -> Any:
        return self.module(*xs[: self.n_args], **dict(zip(self.keys, xs[self.n_args :])))


def _axes_to_shapes(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: list[str],
    axes: Mapping[str, Any],
) -> Any:
    """ONNX-style dynamic axes -> torch.export dynamic_shapes (string dim names, torch >= 2.6)."""

    def spec(name: str) -> dict[int, str] | None:
        ax = axes.get(name)
        if ax is None:
            return None
        if isinstance(ax, Mapping):
            return {int(k): str(v) for k, v in ax.items()}
        return {int(k): f"{name}_dim{k}" for k in ax}

    # torch.export matches dynamic_shapes to forward()'s parameters: positionals by position
    positional = tuple(spec(n) for n in names[: len(args)])
    if not kwargs:
        return positional
    try:
        params = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        params = []
    shapes: dict[str, Any] = {}
    for i, s in enumerate(positional):
        shapes[params[i] if i < len(params) else names[i]] = s
    for k in kwargs:
        shapes[k] = spec(k)
    return shapes


def _supported_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    # older torch versions lack some keywords (dynamo, external_data, ...): drop those
    try:
        params = inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        return kw
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kw
    return {k: v for k, v in kw.items() if k in params}


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    # export what inference runs (no dropout, BN running stats); restore training flags after
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # the exporters print progress and warnings (missing torchvision, deprecations) per export
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_error(label: str, exporter: str, dynamo: bool, e: BaseException) -> ModelLoadError:
    msg = _first_line(e)
    if dynamo and isinstance(e, ImportError | ModuleNotFoundError):
        hint = "install onnxscript (pip install onnxscript) or pass dynamo=False"
    elif dynamo:
        hint = "try dynamo=False (TorchScript exporter), or static shapes with dynamic_axes={}"
    else:
        hint = "try dynamo=True (torch.export exporter), or static shapes with dynamic_axes={}"
    return ModelLoadError(f"{label}: the {exporter} ONNX exporter failed ({msg}); {hint}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    """One line: the error's first line, plus its root cause (the exporters wrap the real one)."""

    def line(x: BaseException) -> str:
        for text in _ANSI.sub("", str(x)).strip().splitlines():
            if text.strip():
                return f"{type(x).__name__}: {text.strip()[:200]}"
        return type(x).__name__

    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return line(e) if root is e else f"{line(e)} <- {line(root)}"
