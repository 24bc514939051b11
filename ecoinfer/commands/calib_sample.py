"""`ecoinfer calib-sample LOG -o DIR -n N`: a calibration set drawn from a request log,
stratified so it follows the traffic and keeps its long tail (ecoinfer.quant.request_log)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecoinfer.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Draw a calibration set from a request log (a folder of .npz batches, per-input .npy "
        "folders or a .py script, as --calib-data takes), stratified by sequence length or a "
        "per-sample key so it follows the traffic, with a share kept for the rarest strata. "
        "Writes .npz batches for build --calib-data."
    )
    p.add_argument("log", metavar="LOG", help="the request log")
    p.add_argument(
        "-o", "--output-dir", dest="out_dir", required=True, metavar="DIR",
        help="folder to write the batches to (new or empty)",
    )  # fmt: skip
    p.add_argument("-n", dest="n", type=int, default=256, help="samples to draw (default 256)")
    p.add_argument(
        "--by",
        default="seq-len",
        metavar="seq-len|NAME",
        help="strata: seq-len (real tokens, power-of-two buckets; default) or the name of an "
        "array of the log with one value per sample (a class, a source)",
    )
    p.add_argument(
        "--tail-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of the sample set aside for the rarest strata (default 0.1)",
    )
    p.add_argument("--batch", type=int, default=32, help="samples per written file (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument(
        "--drop-key",
        action="store_true",
        help="leave the --by array out of the written files (a name the model does not take)",
    )
    p.add_argument(
        "--drop",
        nargs="+",
        default=[],
        metavar="NAME",
        help="other arrays of the log to leave out of the written files (names the model "
        "does not take: build --calib-data refuses them)",
    )


def cmd_calib_sample(args: argparse.Namespace) -> int:
    from ecoinfer.quant.data import open_calibration_data  # noqa: PLC0415
    from ecoinfer.quant.request_log import (  # noqa: PLC0415
        sample_log,
        split_samples,
        strata_key,
        write_batches,
    )

    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a folder that is not empty"
        raise InputError(f"-o {out} is {what}: give a new or empty folder (nothing is replaced)")
    blocker = next((p for p in out.resolve().parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"-o {out}: {blocker} is a file, so no folder can be made there")
    log = Path(args.log).resolve()
    if log.is_dir() and (out.resolve() == log or log in out.resolve().parents):
        raise InputError(
            f"-o {out} is inside the request log {args.log}: the written batches would become "
            "part of it; give a folder outside"
        )
    if args.drop_key and args.by == "seq-len":
        raise InputError("--drop-key drops the --by array; --by seq-len names none")
    where = str(args.log)
    samples = split_samples(open_calibration_data(args.log, what="request log"), where)
    missing = sorted(set(args.drop) - set(samples[0]))
    if missing:
        raise InputError(
            f"--drop {' '.join(missing)}: no such array in the log ({sorted(samples[0])})"
        )
    drop = [*args.drop, *([args.by] if args.drop_key else [])]
    if not set(samples[0]) - set(drop):
        raise InputError("--drop/--drop-key leave no array to write")
    key = strata_key(args.by, samples, where)
    chosen, counts = sample_log(samples, args.n, key, args.tail_fraction, args.seed)
    paths = write_batches(chosen, out, args.batch, drop)
    print(
        f"drew {len(chosen)} of {len(samples)} samples from {where}, stratified by {args.by} "
        f"(tail share {args.tail_fraction:g}, seed {args.seed}); wrote {len(paths)} file(s) to "
        f"{out}"
    )
    print(f"{'stratum':>12}  {'in log':>8}  {'log %':>6}  {'drawn':>6}  {'drawn %':>7}")
    for k in sorted(counts, key=lambda k: (str(type(k)), k)):
        n_log, n_drawn = counts[k]
        print(
            f"{k!s:>12}  {n_log:>8}  {100 * n_log / len(samples):>5.1f}%  {n_drawn:>6}  "
            f"{100 * n_drawn / len(chosen):>6.1f}%"
        )
    return 0
