"""Helpers shared by CLI commands: parsing --shapes and --input, making random inputs, the
per-layer table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from ecoinfer.commands.random_feed import random_array
from ecoinfer.errors import InputError, MissingInputError
from ecoinfer.ir.analysis import check_shape_names, index_table_sizes
from ecoinfer.ir.graph import Graph, Value


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """'name:1x128' or 'name:1,128' -> {name: (1, 128)}; a scalar is 'name:' ."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        for part in item.split(" "):
            name, sep, dims = part.rpartition(":")
            if not sep or not name:
                raise InputError(f"--shapes '{part}': write it as NAME:DIMS, e.g. input_ids:1x128")
            if name in out:  # the last one used to win without a word
                raise InputError(f"--shapes names '{name}' twice; give each input once")
            if dims.strip() == "":
                out[name] = ()
                continue
            tokens = re.split(r"[x,]", dims)
            if not all(t.strip().isdigit() for t in tokens):
                raise InputError(
                    f"--shapes '{part}': dimensions must be whole numbers separated by 'x', e.g. {name}:1x128"
                )
            out[name] = tuple(int(t) for t in tokens)
    return out


def load_input_files(
    items: list[str], graph: Graph, flag: str = "--input"
) -> dict[str, np.ndarray]:
    """--input name=file.npy / --input file.npz -> arrays, exactly as stored (flag: the
    option's name in errors)."""
    feeds: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}  # input name -> the item that gave it

    def put(name: str, arr: np.ndarray, item: str) -> None:
        if name in feeds:  # the later file used to win without a word
            raise InputError(
                f"{flag} {item}: input '{name}' is given twice (also by {source[name]})"
            )
        feeds[name], source[name] = arr, item

    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        p = Path(path)
        if not p.exists():
            raise InputError(f"{flag} {item}: file '{path}' does not exist")
        try:
            data = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise InputError(
                f"{flag} {item}: '{path}' is not a readable .npy/.npz file ({type(e).__name__})"
            ) from None
        if isinstance(data, np.lib.npyio.NpzFile):
            if name:
                if name not in data.files:
                    raise InputError(
                        f"{flag} {item}: '{path}' has no array '{name}' (it has {', '.join(data.files)})"
                    )
                put(name, data[name], item)
            else:
                for k in data.files:
                    put(k, data[k], item)
        else:
            if not name:
                if len(graph.inputs) != 1:
                    raise InputError(
                        f"{flag} {item}: the model has several inputs; write NAME=FILE.npy"
                    )
                name = graph.inputs[0].name
            put(name, data, item)
    return feeds


def check_files_against_shapes(
    given: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> None:
    """The user's --shapes and --input files must agree (the file used to win silently)."""
    for name, arr in given.items():
        if name in shapes and tuple(shapes[name]) != tuple(np.shape(arr)):
            raise InputError(
                f"--shapes {name}:{'x'.join(map(str, shapes[name]))} contradicts the file given "
                f"for it, of shape {'x'.join(map(str, np.shape(arr)))}; give one or the other"
            )


def bound_dims(
    graph: Graph, shapes: dict[str, tuple[int, ...]], given: dict | None = None
) -> dict[str, int]:
    """Symbolic dim name -> size, from the inputs whose shapes the user fixed (--shapes or a
    file): inputs that share a dim name (MiniLM's batch and seq) must agree, so an input left
    to random inputs takes the same sizes."""
    fixed = {k: tuple(v) for k, v in shapes.items()}
    fixed.update({k: tuple(np.shape(a)) for k, a in (given or {}).items()})
    out: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in fixed and v.shape is not None and len(v.shape) == len(fixed[v.name]):
            for d, n in zip(v.shape, fixed[v.name]):
                if isinstance(d, str) and d:
                    out.setdefault(d, int(n))
    return out


def random_inputs(
    graph: Graph,
    shapes: dict[str, tuple[int, ...]],
    seed: int = 0,
    given: dict | None = None,
    dims: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for every input not given: floats ~ N(0,1), masks all ones, ids in range.
    Symbolic dims take, in order: `dims`, the sizes other given inputs fix, a default."""
    check_shape_names(graph, shapes)
    rng = np.random.default_rng(seed)
    tables = index_table_sizes(graph)
    feeds = dict(given or {})
    known = {**bound_dims(graph, shapes, given), **(dims or {})}
    for v in graph.inputs:
        if v.name in feeds:
            continue
        shape = _concrete_shape(v, shapes, known)
        feeds[v.name] = random_array(v.name, v.dtype or "float32", shape, tables.get(v.name), rng)
    return feeds


def assumed_dims(
    graph: Graph,
    shapes: dict[str, tuple[int, ...]],
    given: dict | None = None,
    dims: dict[str, int] | None = None,
) -> dict[str, int]:
    """The symbolic dims random_inputs fills with a default, by name: what a command should
    say it assumed, so a user does not time a shape they never chose."""
    known = {**bound_dims(graph, shapes, given), **(dims or {})}
    out: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in shapes or v.name in (given or {}) or v.shape is None:
            continue
        for d, n in zip(v.shape, _concrete_shape(v, shapes, known)):
            if not isinstance(d, int) and not (d and d in known):
                out[str(d) if d else f"{v.name}[?]"] = n
    return out


def say_assumed(
    graph: Graph, shapes: dict[str, tuple[int, ...]], given: dict, dims: dict | None = None
) -> None:
    dims = assumed_dims(graph, shapes, given, dims)
    if dims:
        print(
            "note: assumed " + ", ".join(f"{k}={v}" for k, v in dims.items()) + " (set with "
            "--shapes)",
            file=sys.stderr,
        )


def _concrete_shape(
    v: Value, shapes: dict[str, tuple[int, ...]], known: dict[str, int] | None = None
) -> tuple[int, ...]:
    if v.name in shapes:
        return shapes[v.name]
    if v.shape is None:
        raise MissingInputError(
            f"input '{v.name}' has an unknown rank; give its shape with --shapes {v.name}:DIMS"
        )
    dims = []
    for d in v.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d and known and d in known:
            dims.append(known[d])
        else:
            # symbolic: 1 for batch-like dims; others need the user to say
            dims.append(1 if d is None or "batch" in str(d).lower() or d == "N" else 8)
    return tuple(dims)


def print_layer_table(rows: list[dict]) -> None:
    """The per-layer table of a build report or an engine file (Engine.layer_table's rows):
    op, precision, chosen tactic, its time and the runner-up."""
    print(f"{'layer':<44} {'op':<30} {'precision':<9} {'tactic':<26} {'ms':>8}  runner-up")
    for r in rows:
        t = f"{r['time_ms']:.4f}" if r["time_ms"] is not None else "-"
        ru = (
            f"{r['runner_up']} {r['runner_up_ms']:.4f} ms"
            if r["runner_up"] and r["runner_up_ms"] is not None
            else ""
        )
        print(
            f"{r['layer'][:44]:<44} {r['op'][:30]:<30} {str(r['precision']):<9} "
            f"{r['tactic'][:26]:<26} {t:>8}  {ru}"
        )
