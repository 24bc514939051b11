"""Pass registry and the per-level pipelines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ecoinfer.ir.graph import Graph

PassFn = Callable[[Graph], Counter[str]]


@dataclass(frozen=True)
class PassInfo:
    name: str
    level: int  # lowest optimization level that runs it
    fn: PassFn
    doc: str


_PASSES: dict[str, PassInfo] = {}

# The order passes run in. Cleanups first so fusions see canonical graphs; normalisation
# and attention fusions before GEMM fusion (which absorbs bias and activations);
# elementwise fusion last, over whatever is left; cleanups again at the end.
ORDER = [
    "fold_constants",
    "eliminate_noops",
    "cse",
    "cancel_transpose_reshape",
    "fold_batchnorm",
    "fuse_layernorm",
    "fuse_embed_layernorm",
    "fuse_rmsnorm",
    "fuse_gelu",
    "fuse_silu",
    "fuse_attention",
    "fuse_conv",
    "fuse_gemm",
    "pack_qkv",
    "fuse_attention_heads",
    "broadcast_masks",
    "nhwc_layout",
    "fuse_elementwise",
    "fuse_quantized",  # level 4: the builder runs it after quantizing, no optimize level does
    "dce",
]


def register_pass(name: str, level: int, doc: str) -> Callable[[PassFn], PassFn]:
    def deco(fn: PassFn) -> PassFn:
        _PASSES[name] = PassInfo(name, level, fn, doc)
        return fn

    return deco


def all_passes() -> dict[str, PassInfo]:
    import ecoinfer.passes  # noqa: F401, PLC0415  (registers every pass)

    return dict(_PASSES)


def pipeline(level: int) -> list[PassInfo]:
    passes = all_passes()
    ordered = [passes[n] for n in ORDER if n in passes]
    ordered += [p for n, p in sorted(passes.items()) if n not in ORDER]
    return [p for p in ordered if p.level <= level]
