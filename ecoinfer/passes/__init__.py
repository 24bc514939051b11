"""Graph optimization passes, one per module; importing this package registers them all."""

from ecoinfer.passes.manager import OptimizeConfig, PassReport, clone_graph, optimize
from ecoinfer.passes.registry import all_passes, pipeline, register_pass

__all__ = [
    "OptimizeConfig",
    "PassReport",
    "all_passes",
    "clone_graph",
    "optimize",
    "pipeline",
    "register_pass",
]
