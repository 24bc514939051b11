"""Every Triton kernel variant the kernel tests launch compiles for a Hopper GPU (sm_90).

The other tests in this folder run the kernels on Triton's CPU interpreter, which accepts
code the compiler rejects. Here the same tests run again in a subprocess without the
interpreter, with sm90_compile.py compiling each launch for sm_90 instead of running it
(their numeric checks fail there, by design, and are ignored); the test fails on any
compile error, naming the kernel and the compiler's message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent


def test_every_kernel_variant_compiles_for_sm90(tmp_path: Path) -> None:
    report = tmp_path / "sm90.json"
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "ECOINFER_SM90_REPORT": str(report),
        "TRITON_CACHE_DIR": str(tmp_path / "triton_cache"),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "sm90_compile", "-p", "no:cacheprovider",
           "-p", "no:xdist", "--ignore", str(Path(__file__).name), "."]  # fmt: skip
    p = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=1500)
    assert report.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(report.read_text())
    errors = r["errors"]
    listing = "\n".join(f"{k.split('|')[0]}: {v[:800]}" for k, v in list(errors.items())[:5])
    assert not errors, f"{len(errors)} kernel variants failed to compile for sm_90:\n{listing}"
    # the kernel tests launch a few hundred variants (591 with Triton 3.6); far fewer would mean
    # that the launches were not reached (a host-side gate, or the plugin not loaded)
    assert r["compiled"] >= 200, r


def test_fp8_gemm_keeps_a_wgmma_in_flight() -> None:
    """Compiled for sm_90, the FP8 TMA GEMM's K loop waits with one wgmma group still in flight
    (pendings = 1): its tensor-core work overlaps the next step's loads. A change that adds an
    unconditional use of the accumulator inside the loop would make Triton wait for each
    wgmma (pendings = 0) and cost the FP8 engines their speed without failing any other test.
    The INT8 kernel's waits are printed for the record: Triton 3.6 pipelines float32
    accumulators only, so there every wait is 0 (sm90_ir.py)."""
    from helpers import compiled_run

    out = compiled_run([str(HERE / "sm90_ir.py"), "fp8e4m3", "int8"], cwd=HERE)
    waits = json.loads(out.strip().splitlines()[-1])
    print(waits)
    assert 1 in waits["fp8e4m3"], waits
