"""Reference implementation of every IR op on torch (CPU and CUDA)."""

# the category modules register their kernels on import
from ecoinfer.kernels.torch_ops import (  # noqa: F401
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
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel, kernel, kernel_ops

__all__ = ["KernelContext", "get_kernel", "kernel", "kernel_ops"]
