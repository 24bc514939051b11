"""A calibration set drawn from a request log: `ecoinfer calib-sample` and its helpers.

A request log is what calibration data readers read (a folder of .npz batches, a folder of
per-input .npy folders, or a .py script yielding batches), only larger: the requests a
deployment served. It is split into single samples (axis 0 of every array), a stratified
sample is drawn (quant.data.stratified_sample: strata in proportion to the log, a share kept
for the rarest strata), and the chosen samples are written back as .npz batches, samples of
one shape per file (nothing is padded or cut, so every value is one the log holds).

Strata (`--by`):
- `seq-len`: the number of real tokens, from `attention_mask` (else the length of axis 1 of
  the first array), bucketed to the next power of two: short and long requests keep their
  share of the traffic.
- NAME: an array of the log holding one value per sample (a class, a source id); it stays in
  the written files unless dropped (a name the model does not take must be dropped for
  `build --calib-data`, which refuses unknown inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

import numpy as np

from ecoinfer.quant.data import CalibrationDataError, stratified_sample

Sample = dict[str, np.ndarray]


def split_samples(reader: Iterable[dict[str, np.ndarray]], where: str) -> list[Sample]:
    """Every batch's samples, in log order; each array keeps a leading axis of 1. Every batch
    holds the same arrays, and the arrays of one batch agree on axis 0 (the batch)."""
    locate = getattr(reader, "locate", None)
    out: list[Sample] = []
    names: list[str] | None = None
    for k, batch in enumerate(reader):
        place = (
            (lambda n, k=k: locate(k, n))
            if locate
            else (lambda n, k=k: f"{where}, batch {k}, '{n}'")
        )
        batch = {n: np.asarray(a) for n, a in batch.items()}
        if names is None:
            names = sorted(batch)
        elif sorted(batch) != names:
            odd = sorted(set(names) ^ set(batch))
            raise CalibrationDataError(
                f"{place(odd[0])}: batch {k} holds {sorted(batch)}, the first batch {names}; "
                "every batch of the log needs the same arrays"
            )
        for n, a in batch.items():
            if a.ndim == 0:
                raise CalibrationDataError(
                    f"{place(n)}: '{n}' is a scalar; every array needs one row per request (axis 0)"
                )
        sizes = {n: a.shape[0] for n, a in batch.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise CalibrationDataError(
                f"{place(next(iter(batch), ''))}: the arrays of batch {k} have different batch "
                f"sizes (axis 0: {sizes}); every array of a batch needs one row per request"
            )
        n_rows = next(iter(sizes.values()))
        out += [{n: a[i : i + 1] for n, a in batch.items()} for i in range(n_rows)]
    if not out:
        raise CalibrationDataError(f"{where}: the request log holds no samples")
    return out


def _bucket(n: int) -> int:
    """The power of two at or above n (1 for 0 and 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _scalar_key(v: np.ndarray) -> Hashable:
    x = v.reshape(-1)[0].item()
    return "nan" if isinstance(x, float) and x != x else x  # NaN != NaN: one stratum for all


def strata_key(by: str, samples: list[Sample], where: str) -> Callable[[Sample], Hashable]:
    """The stratum of a sample for `--by` (seq-len or the name of a per-sample array); the
    key is checked on every sample."""
    first = samples[0]
    if by == "seq-len":
        if "attention_mask" in first:
            return lambda s: _bucket(int(np.count_nonzero(s["attention_mask"])))
        name = next(iter(first))
        if first[name].ndim < 2 or first[name].dtype.kind not in "iu":
            raise CalibrationDataError(
                f"{where}: --by seq-len needs token inputs: an attention_mask, or integer ids "
                f"with a sequence axis ('{name}' is {first[name].dtype}"
                f"{list(first[name].shape)}); stratify by a per-sample array with --by NAME"
            )
        return lambda s: _bucket(s[name].shape[1])
    if by not in first:
        raise CalibrationDataError(
            f"{where}: --by {by}: no array of that name in the log (it has {sorted(first)}); "
            "give seq-len or one of those"
        )
    for k, s in enumerate(samples):
        if s[by].size != 1:
            raise CalibrationDataError(
                f"{where}: --by {by}: sample {k} has {s[by].size} values of '{by}' (shape "
                f"{list(s[by].shape[1:])} per sample); a stratum key needs one (a class, a "
                "source id)"
            )
    return lambda s: _scalar_key(s[by])


def sample_log(
    samples: list[Sample],
    n: int,
    key: Callable[[Sample], Hashable],
    tail_fraction: float,
    seed: int,
) -> tuple[list[Sample], dict[Hashable, tuple[int, int]]]:
    """The chosen samples (log order) and per stratum (count in the log, count chosen)."""
    if n > len(samples):
        raise CalibrationDataError(
            f"-n {n}: the request log holds only {len(samples)} samples; ask for at most that"
        )
    keyed = [(key(s), i) for i, s in enumerate(samples)]
    chosen = stratified_sample(keyed, n, lambda ki: ki[0], tail_fraction=tail_fraction, seed=seed)
    counts: dict[Hashable, tuple[int, int]] = {}
    for k, _ in keyed:
        counts[k] = (counts.get(k, (0, 0))[0] + 1, 0)
    for k, _ in chosen:
        counts[k] = (counts[k][0], counts[k][1] + 1)
    return [samples[i] for _, i in chosen], counts


def write_batches(
    samples: list[Sample], out: Path, batch: int, drop: Iterable[str] = ()
) -> list[Path]:
    """`samples` as .npz files of at most `batch` samples each, one shape per file, without
    the arrays named in `drop`."""
    drop = set(drop)
    groups: dict[tuple, list[Sample]] = {}
    for s in samples:
        kept = {k: v for k, v in s.items() if k not in drop}
        groups.setdefault(tuple((k, v.shape, v.dtype.str) for k, v in kept.items()), []).append(
            kept
        )
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for group in groups.values():
        for start in range(0, len(group), batch):
            part = group[start : start + batch]
            path = out / f"batch{len(paths):04d}.npz"
            np.savez(path, **{k: np.concatenate([s[k] for s in part]) for k in part[0]})
            paths.append(path)
    return paths
