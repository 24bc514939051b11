"""Graph optimization passes, one per module; importing this package registers them all."""

import importlib
import pkgutil

from ecoinfer.passes.manager import OptimizeConfig, PassReport, clone_graph, optimize
from ecoinfer.passes.registry import all_passes, pipeline, register_pass

# every module of this package but the machinery is a pass that registers itself
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("manager", "registry", "util"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "OptimizeConfig",
    "PassReport",
    "all_passes",
    "clone_graph",
    "optimize",
    "pipeline",
    "register_pass",
]
