"""Triton kernels run on the CPU through Triton's interpreter in these tests."""

from __future__ import annotations

import os

# must be set before triton (or a module with @triton.jit kernels) is imported
os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter keeps scalars as 1-element arrays and converts them with
    int(array), which NumPy >= 2.4 rejects: every `range(..., K, ...)` loop with a runtime
    bound fails. Convert through .item() instead (a test-only patch of the interpreter)."""
    try:
        import numpy as np  # noqa: PLC0415
        import triton.runtime.interpreter as interp  # noqa: PLC0415
    except ImportError:
        return
    orig = getattr(interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_ecoinfer_fixed", False):
        return

    def patched(tensor, scope):  # noqa: ANN001, ANN202
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).item()))

    patched._ecoinfer_fixed = True  # type: ignore[attr-defined]
    interp._patch_lang_tensor = patched


_fix_interpreter_scalar_index()
