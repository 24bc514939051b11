"""Op schemas and shape/dtype inference. Importing this package registers every op."""

# category modules register their ops on import
from ecoinfer.ir.ops import (  # noqa: F401
    control,
    elementwise,
    fused_attention,
    fused_conv,
    fused_elementwise,
    fused_embed,
    fused_gemm,
    fused_mha,
    fused_norm,
    fused_quant,
    nn,
    quant,
    reduce,
    tensor,
)
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
