"""Compile the Triton kernels for a Hopper GPU (sm_90) on a machine without one.

The CPU interpreter that runs the kernel tests executes a kernel's Python directly, so it
accepts code that Triton's compiler rejects (a `tl.PropagateNan` enum held in a local
variable passed every interpreter test and failed to compile on the H200). This pytest plugin,
loaded with `-p sm90_compile` in a process where TRITON_INTERPRET is 0, replaces the kernel
launch: each launch is compiled for sm_90 (the triton wheel carries ptxas), nothing runs, and
the outputs are left as allocated. The tests' numeric checks then fail, which means nothing
here; what counts is the record of compile errors, written to the JSON file named by
ECOINFER_SM90_REPORT at the end of the session (test_compile_sm90.py reads it).

Flags that the host code sets for the interpreter only are set as the GPU sets them, so the
compiled variant is the one a GPU would build: SOFT_FP8 (fp8 rounding emulated in float32),
UPCAST (bfloat16 dots widened), HW_TANH (the MUFU tanh, inline asm the interpreter lacks), PDL
(programmatic dependent launch: griddepcontrol, also inline asm).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import time
from typing import Any

import pytest
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

TARGET = GPUTarget("cuda", 90, 32)
GPU_CONSTEXPRS = {"SOFT_FP8": False, "UPCAST": False, "HW_TANH": True, "PDL": True}
STAGES = ("ttir", "ttgir", "llir", "ptx", "cubin")

_backend = make_backend(TARGET)
_binders: dict[int, Any] = {}
_done: dict[str, str | None] = {}  # variant key -> None (compiled) or the error
_seconds = [0.0]


def _variant(fn: JITFunction, args: tuple, kwargs: dict) -> tuple[str, ASTSource, dict]:
    binder = _binders.get(id(fn))
    if binder is None:
        binder = _binders[id(fn)] = create_function_from_signature(
            fn.signature, fn.params, _backend
        )
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(_backend, kwargs, bound, spec, options)
    names = [p.name for p in fn.params]
    for path in list(constexprs):
        name = names[path[0]] if len(path) == 1 else None
        if name in GPU_CONSTEXPRS:
            constexprs[path] = GPU_CONSTEXPRS[name]
    key = f"{fn.module}.{fn.__name__}|{signature}|{sorted(constexprs.items())}|{options}"
    return key, ASTSource(fn, signature, constexprs, attrs), options.__dict__


def _compile_only(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    key, src, options = _variant(self, args, kwargs)
    if key in _done:
        return None
    t0 = time.perf_counter()
    try:
        compile(src, target=TARGET, options=options)
        _done[key] = None
    except Exception as e:  # noqa: BLE001  (recorded, reported by the test that reads it)
        msgs = []
        err: BaseException | None = e
        while err is not None:  # the compiler wraps the cause: keep each level's message
            msgs.append(f"{type(err).__name__}: {str(err)[-700:]}")
            err = err.__cause__
        _done[key] = " <- ".join(reversed(msgs))
    _seconds[0] += time.perf_counter() - t0
    return None


def pytest_configure(config: pytest.Config) -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") in ("0", ""), "needs TRITON_INTERPRET=0"
    JITFunction.run = _compile_only  # type: ignore[method-assign]
    open_interpreter_gates()


def open_interpreter_gates() -> None:
    """The host code offers the Triton tactics on CPU tensors only to the interpreter: say it
    is on (the kernels are JITFunctions all the same, compiled instead of run)."""
    import ecoinfer.kernels.triton as pkg  # noqa: PLC0415

    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "interpreting"):
            mod.interpreting = lambda: True  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("ECOINFER_SM90_REPORT")
    if out:
        errors = {k: v for k, v in _done.items() if v is not None}
        with open(out, "w") as f:
            json.dump(
                {"compiled": len(_done) - len(errors), "errors": errors, "seconds": _seconds[0]},
                f,
                indent=1,
            )
