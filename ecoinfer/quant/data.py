"""Calibration data: readers, validation against a model's inputs, and a stratified sampler.

A data reader is anything iterable that yields input dicts {input name: np.ndarray}, one
per batch; iterating again starts from the first batch. Readers here:

- NpzFolderReader: a folder of .npz files, one per batch, keyed by input name;
- NpyFolderReader: a folder with one sub-folder per input, holding one .npy per batch
  (batch k = the k-th file of every sub-folder in name order);
- ScriptReader: a Python file defining `def batches(): yield {...}`. Loading it RUNS THE
  USER'S CODE, like any --calib-script option: only point it at files you trust.

Files are read with allow_pickle=False: calibration data must not be able to run code.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
import zipfile
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ecoinfer.errors import EcoinferError

Batch = dict[str, np.ndarray]
T = TypeVar("T")


class CalibrationDataError(EcoinferError):
    """Calibration data is missing, empty, unreadable or does not match the model."""


@runtime_checkable
class DataReader(Protocol):
    """An iterable of input dicts; each iteration starts again from the first batch."""

    def __iter__(self) -> Iterator[Batch]: ...


def _as_array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor from a user script
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CalibrationDataError(
            f"{path}: cannot read as a .npy array ({e}); write it with numpy.save"
        ) from e


# ---------------------------------------------------------------------------- readers
@dataclass
class NpzFolderReader:
    """One .npz per batch, keyed by input name; files in name order."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.files = sorted(self.root.glob("*.npz"))

    def __iter__(self) -> Iterator[Batch]:
        for f in self.files:
            if not zipfile.is_zipfile(f):  # numpy would blame pickled data for any non-zip file
                raise CalibrationDataError(
                    f"{f}: not a .npz archive (not a zip file); write it with numpy.savez"
                )
            try:
                with np.load(f, allow_pickle=False) as z:
                    yield {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise CalibrationDataError(
                    f"{f}: cannot read as a .npz archive ({e}); write it with numpy.savez"
                ) from e

    def __len__(self) -> int:
        return len(self.files)

    def locate(self, index: int, name: str) -> str:
        return f"{self.files[index]}[{name}]" if index < len(self.files) else str(self.root)

    def __str__(self) -> str:
        return str(self.root)


@dataclass
class NpyFolderReader:
    """One sub-folder per input (named like the input), one .npy per batch in each."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.files: dict[str, list[Path]] = {
            d.name: sorted(d.glob("*.npy")) for d in sorted(self.root.iterdir()) if d.is_dir()
        }
        counts = {k: len(v) for k, v in self.files.items()}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{k}/ has {c}" for k, c in counts.items())
            raise CalibrationDataError(
                f"{self.root}: input folders hold different numbers of .npy batches ({listing});"
                " give every input the same number of files"
            )

    def __iter__(self) -> Iterator[Batch]:
        for i in range(len(self)):
            yield {k: _load_npy(files[i]) for k, files in self.files.items()}

    def __len__(self) -> int:
        return len(next(iter(self.files.values()))) if self.files else 0

    def locate(self, index: int, name: str) -> str:
        files = self.files.get(name, [])
        return str(files[index]) if index < len(files) else str(self.root / name)

    def __str__(self) -> str:
        return str(self.root)


def _why(e: BaseException) -> str:
    if isinstance(e, SystemExit):  # sys.exit() in a script would end ecoinfer without a word
        return f"it called sys.exit({e.code!r}); calibration scripts must not exit"
    return f"{type(e).__name__}: {e}"


@dataclass
class ScriptReader:
    """A Python file defining `batches()`, a generator of input dicts.

    Importing the file runs it: this executes user code, like any --calib-script.
    """

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        # a unique module name so two scripts (or one loaded twice) do not collide
        mod_name = f"_ecoinfer_calib_{abs(hash(str(self.path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, self.path)
        if spec is None or spec.loader is None:
            raise CalibrationDataError(f"{self.path}: cannot load as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # the user's code can fail in any way: one line
            sys.modules.pop(mod_name, None)
            raise CalibrationDataError(
                f"{self.path}: running the calibration script failed: {_why(e)}"
            ) from e
        fn = getattr(module, "batches", None)
        if not callable(fn):
            raise CalibrationDataError(
                f"{self.path}: defines no function batches(); add `def batches(): yield"
                " {'input_name': array, ...}`"
            )
        self._batches: Callable[[], Iterable[Any]] = fn

    def __iter__(self) -> Iterator[Batch]:
        try:
            for i, b in enumerate(self._batches()):
                if not isinstance(b, dict):
                    raise CalibrationDataError(
                        f"{self.path}: batch {i} is a {type(b).__name__}, not a dict of"
                        " {input name: array}"
                    )
                yield {str(k): _as_array(v) for k, v in b.items()}
        except CalibrationDataError:
            raise
        except (Exception, SystemExit) as e:
            raise CalibrationDataError(f"{self.path}: batches() failed: {_why(e)}") from e

    def locate(self, index: int, name: str) -> str:
        return f"{self.path}: batch {index}"

    def __str__(self) -> str:
        return str(self.path)


@dataclass
class LimitedReader:
    """The first n batches of another reader (--calib-batches N)."""

    reader: DataReader
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise CalibrationDataError(f"--calib-batches must be at least 1, got {self.n}")

    def __iter__(self) -> Iterator[Batch]:
        return itertools.islice(iter(self.reader), self.n)

    def locate(self, index: int, name: str) -> str:
        return _locate(self.reader, index, name)

    def __str__(self) -> str:
        return str(self.reader)


def open_calibration_data(
    path: str | Path, batches: int | None = None, what: str = "calibration data"
) -> DataReader:
    """A reader for a .py script, a folder of .npz files or a folder of per-input folders
    (`what`: how errors name it, e.g. "validation data")."""
    p = Path(path)
    if not p.exists():
        raise CalibrationDataError(f"{what} '{p}' does not exist; check the path")
    reader: DataReader
    if p.is_file():
        if p.suffix != ".py":
            raise CalibrationDataError(
                f"{p}: {what} must be a folder of .npz/.npy files or a .py script"
                " defining batches()"
            )
        reader = ScriptReader(p)
    elif any(p.glob("*.npz")):
        reader = NpzFolderReader(p)
    elif any(d.is_dir() for d in p.iterdir()):
        reader = NpyFolderReader(p)
    else:
        raise CalibrationDataError(
            f"{what} folder '{p}' is empty: it holds no .npz files and no per-input"
            " folders of .npy files"
        )
    return LimitedReader(reader, batches) if batches is not None else reader


# ---------------------------------------------------------------------------- validation
def _locate(reader: Any, index: int, name: str) -> str:
    loc = getattr(reader, "locate", None)
    return loc(index, name) if loc else f"batch {index} of {reader}, input '{name}'"


def validate_batch(batch: Batch, graph: Any, where: Callable[[str], str]) -> None:
    """Check names, dtypes, ranks and fixed dims of one batch against graph's inputs.

    Symbolic dims ("batch") must take the same size in every input of the batch.
    `where(name)` says which file holds an input, for the message.
    """
    from ecoinfer.ir.dtypes import BY_NUMPY  # noqa: PLC0415 (keep torch off the import path)

    expected = {v.name: v for v in graph.inputs if v.name not in graph.initializers}
    unknown = [k for k in batch if k not in expected]
    if unknown:
        raise CalibrationDataError(
            f"{where(unknown[0])}: the model has no input '{unknown[0]}'; its inputs are"
            f" {', '.join(expected)}"
        )
    missing = [k for k in expected if k not in batch]
    if missing:
        raise CalibrationDataError(
            f"{where(missing[0])}: input '{missing[0]}' is missing; every batch must give"
            f" {', '.join(expected)}"
        )
    bound: dict[str, tuple[int, str]] = {}
    for name, v in expected.items():
        a = batch[name]
        info = BY_NUMPY.get(a.dtype)
        got = info.name if info else str(a.dtype)
        if v.dtype and got != v.dtype:
            raise CalibrationDataError(
                f"{where(name)}: input '{name}' is {got}, the model expects {v.dtype}"
            )
        if v.shape is None:
            continue
        if a.ndim != len(v.shape):
            raise CalibrationDataError(
                f"{where(name)}: input '{name}' has shape {list(a.shape)} (rank {a.ndim}),"
                f" the model expects rank {len(v.shape)} ({v.type_str()})"
            )
        for axis, (d, n) in enumerate(zip(v.shape, a.shape)):
            if isinstance(d, int) and d != n:
                raise CalibrationDataError(
                    f"{where(name)}: input '{name}' has shape {list(a.shape)}, the model"
                    f" expects {v.type_str()} (dim {axis} must be {d})"
                )
            if isinstance(d, str):
                if d in bound and bound[d][0] != n:
                    other_n, other = bound[d]
                    raise CalibrationDataError(
                        f"{where(name)}: dim '{d}' is {n} in input '{name}' but {other_n} in"
                        f" input '{other}'; inputs of one batch must agree"
                    )
                bound.setdefault(d, (n, name))


@dataclass
class ValidatedReader:
    """Wraps a reader: checks every batch against the graph, and fails on an empty set."""

    reader: DataReader
    graph: Any  # ecoinfer.ir.graph.Graph

    def __iter__(self) -> Iterator[Batch]:
        n = 0
        for i, batch in enumerate(self.reader):
            validate_batch(batch, self.graph, lambda name, i=i: _locate(self.reader, i, name))
            n += 1
            yield batch
        if n == 0:
            raise CalibrationDataError(
                f"calibration data '{self.reader}' is empty: it yields no batches;"
                " calibration needs at least one"
            )


# ---------------------------------------------------------------------------- sampling
def _largest_remainder(
    weights: Sequence[float], total: int, caps: Sequence[int], order: Sequence[int]
) -> list[int]:
    """Split `total` in proportion to `weights` (Hamilton's method), never above `caps`.

    Ties in the remainders go by `order` (earlier wins). Slots a capped stratum cannot take
    are re-split among the others, so the result sums to min(total, sum(caps)).
    """
    k = len(weights)
    alloc = [0] * k
    rank = {s: r for r, s in enumerate(order)}
    left = min(total, sum(caps))
    while left > 0:
        open_ = [s for s in range(k) if alloc[s] < caps[s] and weights[s] > 0]
        if not open_:
            open_ = [s for s in range(k) if alloc[s] < caps[s]]
            wsum = float(len(open_))
            w = {s: 1.0 for s in open_}
        else:
            wsum = sum(weights[s] for s in open_)
            w = {s: weights[s] for s in open_}
        quota = {s: left * w[s] / wsum for s in open_}
        give = {s: min(math.floor(quota[s]), caps[s] - alloc[s]) for s in open_}
        rest = left - sum(give.values())
        for s in sorted(open_, key=lambda s: (-(quota[s] - math.floor(quota[s])), rank[s])):
            if rest == 0:
                break
            if give[s] < caps[s] - alloc[s]:
                give[s] += 1
                rest -= 1
        for s in open_:
            alloc[s] += give[s]
        left = min(total, sum(caps)) - sum(alloc)
    return alloc


def allocate_strata(counts: dict[Hashable, int], n: int, tail_fraction: float = 0.1) -> dict:
    """How many samples to draw from each stratum.

    round(tail_fraction * n) slots (at least one when a share is asked and n > 1, so a
    small sample still holds a tail case) are reserved for the long tail, the strata rarer
    than average (frequency below 1 / number of strata), split evenly among them with the
    rarest first; the rest follows the traffic, proportional to each stratum's count, by
    largest-remainder rounding. Nobody gets more than it has; dict order gives the ties.
    """
    if not 0.0 <= tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction must be in [0, 1], got {tail_fraction}")
    keys = list(counts)
    c = [counts[k] for k in keys]
    total = sum(c)
    if n >= total:
        return dict(counts)
    rarest_first = sorted(range(len(keys)), key=lambda s: (c[s], s))
    tail = [s for s in rarest_first if c[s] * len(keys) < total]
    reserve = round(tail_fraction * n) if tail else 0
    if tail and tail_fraction > 0 and n > 1:
        reserve = max(reserve, 1)
    tail_alloc = [0] * len(keys)
    if reserve:
        even = [1.0 if s in tail else 0.0 for s in range(len(keys))]
        caps = [c[s] if s in tail else 0 for s in range(len(keys))]
        tail_alloc = _largest_remainder(even, reserve, caps, rarest_first)
    rest = n - sum(tail_alloc)
    prop = _largest_remainder(
        [float(x) for x in c],
        rest,
        [c[s] - tail_alloc[s] for s in range(len(keys))],
        list(range(len(keys))),
    )
    return {k: tail_alloc[s] + prop[s] for s, k in enumerate(keys)}


def stratified_sample(
    samples: Sequence[T],
    n: int,
    key: Callable[[T], Hashable] | str,
    *,
    tail_fraction: float = 0.1,
    seed: int = 0,
) -> list[T]:
    """Draw n samples from a request log, stratified by `key`, keeping a long-tail share.

    key is a function of a sample or the name of a field (dict key or attribute), e.g. a
    sequence-length bucket or a class. Proportions follow allocate_strata(); within each
    stratum samples are drawn without replacement with numpy's generator seeded by
    `seed`, so the same log, n and seed give the same set, returned in log order.
    """
    if n < 1:
        raise CalibrationDataError(f"a calibration sample needs n >= 1, got {n}")
    if not samples:
        raise CalibrationDataError("the request log to sample from is empty")
    if isinstance(key, str):
        field_name = key

        def key(s: Any) -> Hashable:  # noqa: F811 (a field name becomes its getter)
            return s[field_name] if isinstance(s, dict) else getattr(s, field_name)

    members: dict[Hashable, list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault(key(s), []).append(i)
    alloc = allocate_strata({k: len(v) for k, v in members.items()}, n, tail_fraction)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k, idx in members.items():
        take = alloc[k]
        if take:
            chosen.extend(rng.choice(np.asarray(idx), size=take, replace=False).tolist())
    return [samples[i] for i in sorted(chosen)]
