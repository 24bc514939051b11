"""Picking the device a command runs on, and naming it."""

from __future__ import annotations

import platform

from ecoinfer.errors import EcoinferError


def pick_device(choice: str) -> str:
    """ "auto" -> cuda when a GPU is visible, else cpu; "cuda" without a GPU is an error."""
    import torch  # noqa: PLC0415

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise EcoinferError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    return choice


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
