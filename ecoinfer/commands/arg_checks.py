"""Checks every command's arguments get before any work starts.

- Numbers: the same option means the same thing in every command (a duration is a positive,
  finite number of seconds), so one table checks them all; a NaN or infinite duration used to
  make a benchmark run forever.
- Paths: nothing the user gave us is overwritten. A file a command writes must not be one it
  reads (the model, an input, a calibration script) or another file it writes, wherever the two
  spellings of the path point; its folder must exist; it must not be a folder. Checked up
  front, so a long build does not end in an error about where it cannot write.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path

from ecoinfer.errors import InputError


def _finite(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


# option (argparse dest) -> (valid?, what a valid value is)
NUMBERS: dict[str, tuple[Callable[[float], bool], str]] = {
    "duration": (lambda v: _finite(v) and v > 0, "a positive number of seconds"),
    "warmup": (lambda v: _finite(v) and v >= 0, "seconds, 0 or more"),
    "iterations": (lambda v: v >= 1, "at least 1 call"),
    "warmup_iterations": (lambda v: v >= 0, "0 or more calls"),
    "streams": (lambda v: v >= 1, "at least 1 concurrent caller"),
    "batch": (lambda v: v >= 1, "at least 1"),
    "seq": (lambda v: v >= 1, "at least 1 token"),
    "seed": (lambda v: v >= 0, "0 or more"),
    "declared_power_w": (lambda v: _finite(v) and v > 0, "a positive number of watts"),
    "smooth": (lambda v: _finite(v) and 0 <= v <= 1, "a strength from 0 to 1"),
    "slo_ms": (lambda v: _finite(v) and v > 0, "a positive number of milliseconds"),
    "sustained_tuning": (lambda v: _finite(v) and v >= 0, "seconds, 0 or more"),
    "calib_batches": (lambda v: v >= 1, "at least 1 batch"),
    "check_tolerance": (lambda v: _finite(v) and v > 0, "a positive relative error"),
    "max_error": (lambda v: _finite(v) and v > 0, "a finite positive relative error"),
    "tail_fraction": (lambda v: _finite(v) and 0 <= v < 1, "a share from 0 up to (not) 1"),
    "n": (lambda v: v >= 1, "at least 1 sample"),
}

# option -> how the command uses the path: "in" is read, "out" written, "inout" both (a cache
# that is read if present and written back). Options that name folders are left to their
# commands, except --cache-dir, which must not be a file.
PATHS: dict[str, str] = {
    "model": "in",
    "results": "in",
    "calib_data": "in",
    "val_data": "in",
    "input": "in",
    "check_input": "in",
    "calib_cache": "inout",
    "timing_cache": "inout",
    "output": "out",
    "json": "out",
    "markdown": "out",
    "html": "out",
    "plot": "out",
    "export_json": "out",
    "report": "out",
}


def _flag(dest: str) -> str:
    if dest in ("model", "results"):
        return dest.upper()
    return ("-" if len(dest) == 1 else "--") + dest.replace("_", "-")


def check_numbers(args: argparse.Namespace) -> None:
    for dest, (ok, what) in NUMBERS.items():
        v = getattr(args, dest, None)
        if v is None or isinstance(v, bool):
            continue
        if not ok(v):
            raise InputError(f"{_flag(dest)} {v}: give {what}")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two spellings name one file (./m.onnx, an absolute path, a link); this module
    imports no torch, so `run --lean` stays torch-free."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def _files(dest: str, value: object) -> list[str]:
    """The file paths of an option's value: NAME=FILE items give FILE."""
    items = value if isinstance(value, list) else [value]
    out = []
    for it in items:
        if not isinstance(it, str) or not it:
            continue
        if dest in ("input", "check_input") and "=" in it:
            it = it.split("=", 1)[1]
        out.append(it)
    return out


def check_paths(args: argparse.Namespace) -> None:
    given: list[tuple[str, str, str]] = []  # (flag, path, role)
    for dest, role in PATHS.items():
        for path in _files(dest, getattr(args, dest, None)):
            given.append((_flag(dest), path, role))
    for i, (flag, path, role) in enumerate(given):
        if role == "in":
            continue
        for other_flag, other, other_role in given[:i] + given[i + 1 :]:
            # an in/out cache may be read and written by the same option only
            if role == "inout" and other_role == "inout" and other_flag == flag:
                continue
            if same_file(path, other):
                if other_role == "out":
                    why = "both are written there and one would be lost"
                else:
                    what = "writes" if role == "out" else "writes back"
                    why = f"the command {what} {flag}, which would destroy {other_flag}"
                raise InputError(
                    f"{flag} {path} is the same file as {other_flag} {other}: {why}; "
                    "give another path"
                )
        p = Path(path)
        if p.is_dir():
            raise InputError(f"{flag} {path} is a folder; give a file path inside it")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(
                f"{flag} {path}: the folder {parent} does not exist; create it or give another path"
            )
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise InputError(f"--cache-dir {cache_dir} is a file, not a folder; give a folder")


def check_args(args: argparse.Namespace) -> None:
    """One-line InputError for the first bad number or path, before any work."""
    check_numbers(args)
    check_paths(args)
