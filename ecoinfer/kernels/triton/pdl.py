"""Programmatic dependent launch (PDL, Hopper and later) for the Triton kernels.

A kernel launched with PDL may be scheduled while the kernel before it on the stream is still
finishing: its launch and the placement of its programs overlap the previous kernel's tail
instead of following it. Every kernel here that is launched so calls `pdl_enter(PDL)` first:
`griddepcontrol.wait` blocks until the previous kernel has completed and its memory is visible,
before this kernel reads or writes anything (a buffer it writes may be one the previous kernel
still reads: the memory plan reuses them), then lets the next kernel launch early in turn.
Waiting before any access keeps the order exact, transitively: no kernel completes before the
one ahead of it. A kernel launched without PDL (cuBLAS, cuDNN, torch) waits as usual.

`pdl_args(device)` gives the launch keywords, the same switch for both halves (a kernel
launched early that does not wait would race): on for CUDA devices of compute capability 9.0
or more with the compiler (not the CPU interpreter). An engine runs its kernels inside
`pdl_scope(engine.pdl)`: the builder times the whole engine both ways and keeps the faster
(on an H200 it cut BERT-base b1 by 9% and cost FP8 b64 1-2%: bench/results/pdl_ab_*). The
environment overrides both: ECOINFER_PDL=0 never, ECOINFER_PDL=1 always.
"""

from __future__ import annotations

import functools
import os
import threading
from contextlib import AbstractContextManager

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ecoinfer.device import thread_setting


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """First statement of a kernel: with PDL, wait for the previous kernel, then let the next
    one launch (it waits for this one likewise)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


_scope = threading.local()


def pdl_scope(on: bool) -> AbstractContextManager[None]:
    """Launches from this thread inside the block use PDL only if `on` (an engine's choice)."""
    return thread_setting(_scope, "on", on)


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_supported(device: torch.device) -> bool:
    """This device can launch with PDL and the environment does not forbid it."""
    from ecoinfer.kernels.triton.gemm import interpreting  # noqa: PLC0415  (gemm imports pdl)

    if device.type != "cuda" or interpreting() or os.environ.get("ECOINFER_PDL") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def pdl_enabled(device: torch.device) -> bool:
    """Launch with PDL here and now: supported, and not turned off by the enclosing scope
    (outside any scope, as when the tuner times one layer, it is on)."""
    if not pdl_supported(device):
        return False
    return os.environ.get("ECOINFER_PDL") == "1" or getattr(_scope, "on", None) is not False


def pdl_args(device: torch.device) -> dict[str, bool]:
    """Launch keywords: the kernel's PDL constexpr and Triton's launch_pdl option, together."""
    on = pdl_enabled(device)
    return {"PDL": on, "launch_pdl": on}
