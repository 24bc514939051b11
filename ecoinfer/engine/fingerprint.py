"""What an engine (and a timing-cache entry) is bound to: GPU model and software versions."""

from __future__ import annotations

import torch

from ecoinfer.device import cpu_name

# tolerance of a tactic against the reference tactic, and of an engine against onnxruntime
# FP32, per compute precision (relative L2 error), as DESIGN.md sets them
TOLERANCE = {"float32": 1e-5, "tf32": 1e-3, "float16": 1e-2, "bfloat16": 1e-2}
# --check-accuracy of an INT8/FP8 engine against FP32: a sanity bound that catches broken
# quantization (a wrong scale gives errors near 1), not a quality target. Measured on H200
# engines of random-weight BERT-base: FP8 6.9e-2, INT8 3.1e-2 against eager FP32 (real
# weights do better: MiniLM FP8 cosine 0.9993). --accuracy-budget sets the model's own bar.
QUANT_CHECK_TOLERANCE = 0.1


def _driver() -> str | None:
    try:
        import pynvml  # noqa: PLC0415

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001  (no NVML: the driver is unknown, not an error)
        return None


def _triton() -> str | None:
    try:
        import triton  # noqa: PLC0415

        return triton.__version__
    except ImportError:
        return None


def fingerprint(device: str | torch.device) -> dict[str, str | None]:
    """GPU name, compute capability, driver, CUDA, torch, triton and ecoinfer versions."""
    from ecoinfer import __version__  # noqa: PLC0415

    dev = torch.device(device)
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        name = torch.cuda.get_device_name(dev)
        cc = f"{cap[0]}.{cap[1]}"
        cuda = torch.version.cuda
        driver = _driver()
    else:
        name = cpu_name()
        cc = None
        cuda = None
        driver = None
    return {
        "device_type": dev.type,
        "device_name": name,
        "compute_capability": cc,
        "driver": driver,
        "cuda": cuda,
        "torch": torch.__version__,
        "triton": _triton(),
        "ecoinfer": __version__,
    }


def differences(built: dict, here: dict) -> list[str]:
    """Human-readable list of what differs between two fingerprints."""
    out = []
    for k in sorted(set(built) | set(here)):
        if built.get(k) != here.get(k):
            out.append(f"{k}: engine {built.get(k)!r}, this machine {here.get(k)!r}")
    return out
