"""Implementations of IR ops: the torch reference (CPU and CUDA) and, later, Triton kernels."""
