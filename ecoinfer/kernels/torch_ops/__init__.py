"""Reference implementation of every IR op on torch (CPU and CUDA)."""

from ecoinfer.kernels.torch_ops import control, elementwise, nn, reduce, tensor  # noqa: E402, F401, I001
from ecoinfer.kernels.torch_ops import fused_attention, fused_conv, fused_elementwise, fused_gemm, fused_mha  # noqa: E402, F401, I001
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel, kernel, kernel_ops

__all__ = ["KernelContext", "get_kernel", "kernel", "kernel_ops"]
