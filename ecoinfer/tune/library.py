"""Imports every module that registers tactics (torch-library tactics, Triton kernels)."""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("ecoinfer.tune")

# modules that register tactics; a module whose dependency is missing (e.g. no Triton) is
# skipped with a log line, so the builder still has the reference tactic for every op
_MODULES = (
    "ecoinfer.tune.torch_tactics",
    "ecoinfer.kernels.triton.tactics",
)

for _name in _MODULES:
    try:
        importlib.import_module(_name)
    except ImportError as e:  # pragma: no cover - depends on the installed stack
        log.info("tactics from %s unavailable: %s", _name, e)
