"""ecoinfer: an inference optimizer and runtime that cuts the energy of serving a model."""

from typing import TYPE_CHECKING, Any

from ecoinfer.errors import EcoinferError

__version__ = "0.1.0"

__all__ = [
    "BuildConfig",
    "EcoinferError",
    "Model",
    "ShapeProfile",
    "__version__",
    "build",
    "load",
    "load_engine",
]

if TYPE_CHECKING:
    from ecoinfer.api import Model, build, load
    from ecoinfer.engine.builder import BuildConfig, load_engine
    from ecoinfer.engine.runtime import ShapeProfile


def __getattr__(name: str) -> Any:
    # these import torch: only when asked for, so that `import ecoinfer.lean` (the torch-free
    # runtime) does not pay for it
    if name in ("Model", "load", "build"):
        from ecoinfer import api  # noqa: PLC0415

        return getattr(api, name)
    if name in ("BuildConfig", "load_engine"):
        from ecoinfer.engine import builder  # noqa: PLC0415

        return getattr(builder, name)
    if name == "ShapeProfile":
        from ecoinfer.engine.runtime import ShapeProfile  # noqa: PLC0415

        return ShapeProfile
    raise AttributeError(f"module 'ecoinfer' has no attribute {name!r}")
