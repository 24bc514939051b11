"""Reference implementation of every IR op on torch (CPU and CUDA)."""

from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel, kernel, kernel_ops

from ecoinfer.kernels.torch_ops import elementwise, nn, reduce, tensor, control  # noqa: E402, F401, I001

__all__ = ["KernelContext", "get_kernel", "kernel", "kernel_ops"]
