"""The random value of one model input, as `ecoinfer run` and the benchmarks draw it.

Torch-free (numpy only), so that `ecoinfer run --lean` draws the same inputs as `ecoinfer run`
without importing torch: floats ~ N(0,1), booleans and masks all ones, token-type and segment
ids zero, other integer ids within the table they index (0 or 1 when unknown).
"""

from __future__ import annotations

import numpy as np

from ecoinfer.errors import MissingInputError


def random_array(
    name: str, dtype: str, shape: tuple[int, ...], table: int | None, rng: np.random.Generator
) -> np.ndarray:
    low = name.lower()
    if dtype == "bool":
        return np.ones(shape, dtype=bool)
    if dtype.startswith(("int", "uint")):
        if "mask" in low:
            return np.ones(shape, dtype=dtype)
        if "type" in low or "segment" in low:
            return np.zeros(shape, dtype=dtype)
        return rng.integers(0, table or 2, size=shape).astype(dtype)
    if dtype in ("float32", "float16", "float64"):
        return rng.standard_normal(shape).astype(dtype)
    raise MissingInputError(
        f"input '{name}' is {dtype}; ecoinfer cannot make random data of that type, "
        "give it with --input"
    )
