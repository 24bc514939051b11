"""ecoinfer: an inference optimizer and runtime that cuts the energy of serving a model."""

from ecoinfer.api import Model, load
from ecoinfer.errors import EcoinferError

__version__ = "0.1.0"

__all__ = ["EcoinferError", "Model", "__version__", "load"]
