"""Numpy-style broadcasting of concrete shapes, in plain Python.

torch.broadcast_shapes imports sympy on its first call (about 0.5 s), which would land in an
engine's first inference; kernels and tactics use this instead.
"""

from __future__ import annotations

from collections.abc import Iterable


def broadcast_shape(*shapes: Iterable[int]) -> tuple[int, ...]:
    """The broadcast of `shapes` (numpy rules); RuntimeError (as torch raises) when they do not
    broadcast."""
    dims = [tuple(int(d) for d in s) for s in shapes]
    rank = max((len(s) for s in dims), default=0)
    out = [1] * rank
    for s in dims:
        for k, d in enumerate((1,) * (rank - len(s)) + s):
            if d != 1 and out[k] not in (1, d):
                raise RuntimeError(f"shapes {[list(x) for x in dims]} do not broadcast")
            if d != 1:
                out[k] = d
    return tuple(out)
