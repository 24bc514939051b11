"""`ecoinfer run --lean ENGINE`: run an engine file through the torch-free runtime.

Imports neither torch nor Triton: a fresh process goes from start to first output in the time
of Python, numpy, the file check and the GPU set-up (ecoinfer/lean).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ecoinfer.commands.random_feed import random_array
from ecoinfer.errors import InputError


def _checksum(a: np.ndarray) -> str:
    x = a.astype(np.float64)
    return f"sum={x.sum():.6g} mean|x|={np.abs(x).mean() if x.size else 0:.6g}"


def lean_inputs(engine, seed: int, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Inputs of the first recorded shape not given, drawn as `ecoinfer run` draws them."""
    rng = np.random.default_rng(seed)
    feeds = dict(given)
    for name, spec in engine.programs[0].inputs.items():
        if name not in feeds:
            table = engine.index_inputs.get(name)
            feeds[name] = random_array(name, spec["dtype"], tuple(spec["shape"]), table, rng)
    return feeds


def _given(specs: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            if not s.endswith(".npz"):
                raise InputError(f"--input {s}: expected NAME=FILE.npy or FILE.npz")
            path = s
        if not Path(path).is_file():
            raise InputError(f"--input {s}: no such file {path}")
        try:  # never unpickle: an .npy/.npz of objects could run code
            data = np.load(path, allow_pickle=False)
            if sep:
                out[name] = np.asarray(data)
            else:
                with data as z:
                    out.update({k: z[k] for k in z.files})
        except Exception as e:  # noqa: BLE001
            raise InputError(
                f"--input {s}: '{path}' is not a readable .npy/.npz file of plain arrays "
                f"({type(e).__name__})"
            ) from None
    return out


def cmd_run_lean(args: argparse.Namespace) -> int:
    from ecoinfer.lean import load  # noqa: PLC0415

    if args.device == "cpu":
        raise InputError("--lean runs on the GPU (libcuda); use `ecoinfer run` for the CPU")
    t0 = time.perf_counter()
    engine = load(args.model)
    t1 = time.perf_counter()
    feeds = lean_inputs(engine, args.seed, _given(args.input))
    for name, arr in feeds.items():
        print(f"input  {name:<24} {arr.dtype}[{'x'.join(map(str, arr.shape))}]")
    t2 = time.perf_counter()
    out = engine.run(feeds)
    t3 = time.perf_counter()
    for name, arr in out.items():
        print(f"output {name:<24} {arr.dtype}[{'x'.join(map(str, arr.shape))}] {_checksum(arr)}")
    print(
        f"ran without torch on {engine.driver.name()}: load {1e3 * (t1 - t0):.0f} ms, first run "
        f"{1e3 * (t3 - t2):.1f} ms"
    )
    for w in engine.warnings:
        print(f"warning: {w}")
    if args.output:
        with Path(args.output).open("wb") as f:  # exactly this path: savez would add .npz
            np.savez(f, **out)
        print(f"saved outputs to {args.output}")
    return 0
