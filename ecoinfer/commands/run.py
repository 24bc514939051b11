"""`ecoinfer run`: run a model once on given or random inputs and print a checksum per output."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ecoinfer.api import Model
from ecoinfer.commands.common import (
    check_files_against_shapes,
    load_input_files,
    parse_shapes,
    random_inputs,
    say_assumed,
)
from ecoinfer.device import pick_device
from ecoinfer.frontend.onnx import import_onnx


def checksum(a: np.ndarray) -> str:
    """Sum and mean |x| in float64: enough to compare runs by eye."""
    x = a.astype(np.float64)
    return f"sum={x.sum():.6g} mean|x|={np.abs(x).mean() if x.size else 0:.6g}"


def cmd_run(args: argparse.Namespace) -> int:
    from ecoinfer.engine.format import is_engine_file  # noqa: PLC0415

    shapes = parse_shapes(args.shapes)
    if is_engine_file(args.model):
        from ecoinfer.engine.builder import load_engine  # noqa: PLC0415

        model = load_engine(args.model, None if args.device == "auto" else args.device)
        graph = model.graph
        # symbolic dims default to the first profile's opt shapes
        shapes = (
            {**{k: v for k, v in model.profiles[0].opt.items()}, **shapes}
            if model.profiles
            else shapes
        )
        device = str(model.device)
    else:
        graph = import_onnx(args.model)
        model = Model(graph, args.model)
        device = None
    given = load_input_files(args.input, graph)
    check_files_against_shapes(given, parse_shapes(args.shapes))
    feeds = random_inputs(graph, shapes, args.seed, given)  # checks the names first
    say_assumed(graph, shapes, given)
    device = device or pick_device(args.device)
    for name, arr in feeds.items():
        origin = "file" if name in given else "random"
        print(f"input  {name:<24} {arr.dtype}[{'x'.join(map(str, arr.shape))}] ({origin})")
    t0 = time.perf_counter()
    out = model.run(feeds) if not isinstance(model, Model) else model.run(feeds, device=device)
    dt = time.perf_counter() - t0
    for name, arr in out.items():
        print(f"output {name:<24} {arr.dtype}[{'x'.join(map(str, arr.shape))}] {checksum(arr)}")
    print(f"ran on {device} in {dt * 1e3:.1f} ms (first run, includes set-up)")
    if args.output:
        path = Path(args.output)
        with path.open("wb") as f:  # to exactly this path (np.savez appends .npz to a name)
            np.savez(f, **out)
        print(f"saved outputs to {path}")
    return 0
