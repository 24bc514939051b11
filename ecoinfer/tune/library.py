"""Imports every module that registers tactics (torch-library tactics, Triton kernels)."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("ecoinfer.tune")

# modules that register tactics; a module whose dependency is missing (e.g. no Triton) is
# skipped with a log line, so the builder still has the reference tactic for every op
_MODULES = (
    "ecoinfer.tune.torch_tactics",
    "ecoinfer.tune.quant_tactics",
    "ecoinfer.kernels.triton.tactics",
)

for _name in _MODULES:
    try:
        importlib.import_module(_name)
    except Exception as e:  # noqa: BLE001  # pragma: no cover - depends on the installed stack
        # a tactic module that cannot load (missing Triton, a broken kernel file) must not stop
        # the builder: every op keeps its reference tactic
        log.warning("tactics from %s unavailable: %s: %s", _name, type(e).__name__, e)
