"""Cold start of an engine file in a fresh process, split into phases.

    python bench/cold_start.py ENGINE --model bert-base|minilm|resnet50 --batch B [--profile N]
        [--json FILE]

Phases: import torch, import ecoinfer, read + verify the file, build the engine object (weights
to the device, tactics instantiated), first inference (plan, warm-up, CUDA-graph capture,
replay), second inference. --profile N prints the N most expensive functions of the load and
first inference (cProfile, cumulative), which is what explains a missed target.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def _feeds(model: str, batch: int, seq: int = 128) -> dict:
    import numpy as np  # noqa: PLC0415

    if model == "resnet50":
        return {"x": np.random.randn(batch, 3, 224, 224).astype(np.float32)}
    ids = np.random.randint(0, 1000, (batch, seq)).astype(np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine")
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument(
        "--lean",
        action="store_true",
        help="load with the torch-free runtime (ecoinfer.lean; the engine built with --lean)",
    )
    a = ap.parse_args()
    if a.lean:
        return _lean(a)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    import torch  # noqa: PLC0415

    phases["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    from ecoinfer.engine.builder import load_engine  # noqa: PLC0415
    from ecoinfer.engine.format import read_engine  # noqa: PLC0415

    phases["import ecoinfer"] = time.perf_counter() - t
    feeds = _feeds(a.model, a.batch)
    prof = None
    if a.profile:
        import cProfile  # noqa: PLC0415

        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    read_engine(a.engine)  # the read + SHA-256 check alone (load_engine reads it again)
    phases["read + verify file (measured separately)"] = time.perf_counter() - t
    t = time.perf_counter()
    eng = load_engine(a.engine)
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    phases["load_engine"] = time.perf_counter() - t
    t = time.perf_counter()
    eng.run(feeds)
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    phases["first inference"] = time.perf_counter() - t
    if prof is not None:
        prof.disable()
    t = time.perf_counter()
    eng.run(feeds)
    if eng.device.type == "cuda":
        torch.cuda.synchronize()
    phases["second inference"] = time.perf_counter() - t
    total = time.perf_counter() - T0
    cold = total - phases["second inference"] - phases["read + verify file (measured separately)"]
    name = torch.cuda.get_device_name() if eng.device.type == "cuda" else "cpu"
    print(f"cold start of {Path(a.engine).name} on {name}:")
    for k, v in phases.items():
        print(f"  {k:42s} {v:7.3f} s")
    print(f"  {'process start to first output':42s} {cold:7.3f} s")
    if eng.warnings:
        print("  warnings: " + " | ".join(eng.warnings[:5]))
    if prof is not None:
        import pstats  # noqa: PLC0415

        pstats.Stats(prof).sort_stats("cumulative").print_stats(a.profile)
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {"gpu": name, "engine": a.engine, "phases": phases, "cold_s": cold}, indent=1
            )
        )
    return 0


def _lean(a: argparse.Namespace) -> int:
    """The same phases through ecoinfer.lean, in a process that never imports torch."""
    phases: dict[str, float] = {}
    t = time.perf_counter()
    from ecoinfer.lean import load  # noqa: PLC0415

    phases["import ecoinfer.lean"] = time.perf_counter() - t
    feeds = _feeds(a.model, a.batch)
    t = time.perf_counter()
    eng = load(a.engine)
    phases["load (file check, GPU set-up, kernels, weights)"] = time.perf_counter() - t
    t = time.perf_counter()
    eng.run(feeds)
    phases["first inference"] = time.perf_counter() - t
    t = time.perf_counter()
    eng.run(feeds)
    phases["second inference (captures the CUDA graph)"] = time.perf_counter() - t
    first = time.perf_counter() - T0 - phases["second inference (captures the CUDA graph)"]
    torch_loaded = "torch" in sys.modules
    name = eng.driver.name()
    print(f"cold start of {Path(a.engine).name} on {name} (torch-free runtime):")
    for k, v in phases.items():
        print(f"  {k:48s} {v:7.3f} s")
    print(f"  {'script start to first output':48s} {first:7.3f} s")
    print(f"  torch imported: {torch_loaded}; triton imported: {'triton' in sys.modules}")
    if eng.warnings:
        print("  warnings: " + " | ".join(eng.warnings[:5]))
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {"gpu": name, "engine": a.engine, "runtime": "lean", "phases": phases,
                 "cold_s": first, "torch_imported": torch_loaded},
                indent=1,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
