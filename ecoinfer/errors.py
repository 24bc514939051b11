"""User-facing errors. Every message says what is wrong, where, and what to do."""

from __future__ import annotations


class EcoinferError(Exception):
    """Base of every error ecoinfer raises on purpose; the CLI prints it on one line."""


class ModelLoadError(EcoinferError):
    """The model file is missing, truncated or not an ONNX model."""


class UnsupportedOpError(EcoinferError):
    """The model uses an op (or op form) ecoinfer cannot import."""


class UnsupportedDTypeError(EcoinferError):
    """A tensor has a data type ecoinfer cannot represent."""


class GraphError(EcoinferError):
    """The graph is malformed: undefined inputs, cycles, inconsistent types."""


class ShapeInferenceError(GraphError):
    """Shapes or dtypes of a node's inputs contradict the op's rules."""


class InputError(EcoinferError):
    """An input given at run time does not match the model."""


class MissingInputError(InputError):
    pass


class UnknownInputError(InputError):
    pass


class InputDTypeError(InputError):
    pass


class InputShapeError(InputError):
    pass


class IndexOutOfRangeError(EcoinferError):
    """An index tensor (Gather, Scatter, ...) points outside the data it indexes."""


class ExecutionError(EcoinferError):
    """A node failed while running; the message names the node."""


class EnergyMeterError(EcoinferError):
    """An energy meter (NVML, RAPL) cannot be opened or read; the message names the call
    that failed and what to do (e.g. use --device cpu, or declare a power figure)."""
