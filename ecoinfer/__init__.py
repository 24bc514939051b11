"""ecoinfer: an inference optimizer and runtime that cuts the energy of serving a model."""

from typing import TYPE_CHECKING, Any

from ecoinfer.errors import EcoinferError

__version__ = "0.1.0"

__all__ = ["EcoinferError", "Model", "__version__", "load"]

if TYPE_CHECKING:
    from ecoinfer.api import Model, load


def __getattr__(name: str) -> Any:
    # Model and load import torch: only when asked for, so that `import ecoinfer.lean` (the
    # torch-free runtime) does not pay for it
    if name in ("Model", "load"):
        from ecoinfer import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'ecoinfer' has no attribute {name!r}")
