"""Op schemas and shape/dtype inference. Importing this package registers every op."""

# category modules register their ops on import
from ecoinfer.ir.ops import control, elementwise, nn, reduce, tensor  # noqa: E402, F401, I001
from ecoinfer.ir.ops import fused_attention, fused_conv, fused_elementwise, fused_gemm, fused_mha  # noqa: E402, F401, I001
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
