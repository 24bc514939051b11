"""Op schemas and shape/dtype inference. Importing this package registers every op."""

from ecoinfer.ir.ops.registry import (
    InferContext,
    OpSchema,
    OutType,
    get_schema,
    has_schema,
    infer_node,
    op,
    supported_ops,
)

# category modules register their ops on import
from ecoinfer.ir.ops import elementwise, nn, reduce, tensor, control  # noqa: E402, F401, I001

__all__ = [
    "InferContext",
    "OpSchema",
    "OutType",
    "get_schema",
    "has_schema",
    "infer_node",
    "op",
    "supported_ops",
]
