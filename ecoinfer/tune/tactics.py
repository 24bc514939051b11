"""Tactic registry: every op has several implementations; the builder times them per layer.

A tactic is registered once per (op, implementation):

    @tactic("FusedGemm", domain="ecoinfer", name="cublas_addmm", devices=("cuda",),
            dtypes=("float16", "bfloat16", "float32"))
    def cublas_addmm(node: Node, attrs: dict, inputs: list[TensorInfo], cfg: dict, build: BuildInfo):
        if <not applicable>: return None          # e.g. unsupported attrs or shapes
        def run(xs: list[Tensor | None]) -> list[Tensor]: ...
        return run

`make(...)` returns a callable that computes the node's outputs from its inputs (same
contract as the torch reference kernels, without the context), or None when the tactic
cannot implement this node. A tactic with a tunable configuration space gives `configs`:
a function (node, attrs, inputs, build) -> list of config dicts; every config is a separate
candidate named `name[k=v,...]`. The reference tactic ("reference": the torch kernel of
ecoinfer/kernels/torch_ops) exists for every op and judges the others: a candidate whose
outputs differ from it beyond the precision's tolerance, that raises, or that fails to
compile scores infinity and is logged, never failing the build.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoinfer.errors import InputError
from ecoinfer.ir.graph import Node

Tensor = torch.Tensor
RunFn = Callable[[list[Tensor | None]], list[Tensor]]


@dataclass(frozen=True)
class TensorInfo:
    """A node input as the builder sees it at the profile's opt shapes (None: omitted input)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    is_weight: bool = False  # a constant of the engine (weights can be pre-packed at build)


@dataclass
class BuildInfo:
    """What a tactic may know about the build."""

    device: torch.device
    precision: str  # compute precision of this layer: "float32", "tf32", "float16", "bfloat16"
    weights: dict[str, Tensor] = field(default_factory=dict)  # the engine's weights by name
    exclude: frozenset[str] = frozenset()  # tactic names the user ruled out (--exclude-tactics)
    # --workspace: the most transient GPU memory one call of a tactic may allocate beyond its
    # outputs (measured by the tuner, tune/autotune.py); None: no limit
    workspace_bytes: int | None = None
    # time candidates on rotating copies of their inputs larger than the L2 (CUDA; see
    # tune.autotune.input_sets) rather than on one set that stays in the cache
    cold_inputs: bool = False
    # a lean build (--lean): a Triton tactic that passes is chosen over a faster non-Triton
    # one, so the engine launches only kernels the torch-free runtime can replay
    prefer_triton: bool = False
    # > 0 (CUDA): the fastest candidates of a layer are timed again over this many seconds of
    # back-to-back calls, at the clock the power limit allows, and the fastest then wins
    # (tune/autotune.py time_sustained; --sustained-tuning)
    sustained_s: float = 0.0


MakeFn = Callable[
    [Node, dict[str, Any], list[TensorInfo | None], dict[str, Any], BuildInfo], RunFn | None
]
ConfigsFn = Callable[
    [Node, dict[str, Any], list[TensorInfo | None], BuildInfo], list[dict[str, Any]]
]


@dataclass(frozen=True)
class TacticSpec:
    name: str
    op_type: str
    domain: str
    make: MakeFn
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")
    configs: ConfigsFn | None = None
    doc: str = ""


_TACTICS: dict[tuple[str, str], list[TacticSpec]] = {}


def tactic(
    op_type: str | list[str],
    name: str,
    domain: str = "",
    devices: tuple[str, ...] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16"),
    configs: ConfigsFn | None = None,
    doc: str = "",
) -> Callable[[MakeFn], MakeFn]:
    def deco(fn: MakeFn) -> MakeFn:
        for op in [op_type] if isinstance(op_type, str) else op_type:
            lst = _TACTICS.setdefault((domain, op), [])
            lst[:] = [t for t in lst if t.name != name]
            lst.append(TacticSpec(name, op, domain, fn, devices, dtypes, configs, doc))
        return fn

    return deco


def tactics_for(op_type: str, domain: str, device: str, dtype: str) -> list[TacticSpec]:
    """Registered non-reference tactics for this op that run on `device` in `dtype`."""
    import ecoinfer.tune.library  # noqa: F401, PLC0415  (registers the tactic modules)

    dev = "cuda" if device.startswith("cuda") else "cpu"
    base = "float32" if dtype == "tf32" else dtype
    return [t for t in _TACTICS.get((domain, op_type), []) if dev in t.devices and base in t.dtypes]


def check_tactic_names(names: Iterable[str]) -> frozenset[str]:
    """The names as a set, each a registered tactic's; an unknown one is a clear error."""
    known = {t.name for specs in all_tactics().values() for t in specs}
    bad = sorted(set(names) - known)
    if bad:
        raise InputError(
            f"--exclude-tactics: no tactic named {', '.join(repr(b) for b in bad)}; "
            f"known tactics: {', '.join(sorted(known))}"
        )
    return frozenset(names)


def all_tactics() -> dict[tuple[str, str], list[TacticSpec]]:
    import ecoinfer.tune.library  # noqa: F401, PLC0415

    return {k: list(v) for k, v in _TACTICS.items()}
