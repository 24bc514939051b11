"""Index-range checks for graph inputs on the GPU that cost no host synchronisation.

An engine input that indexes a table (token ids into an embedding) must hold indices in
[-n, n-1]. Checking a GPU tensor on the host means waiting for the GPU, and a wait in every
call leaves the GPU idle while the host prepares the next one. So on CUDA the context checks
these inputs on the device instead: the guard clamps each one into range (an out-of-range
index must never reach a gather kernel, where it would fault the whole CUDA context) and sets
a sticky per-input flag. The guard's kernels are captured in the plan's CUDA graph.

The flags come back to the host without blocking: after each call they are copied into a
pinned slot and an event is recorded; later calls look at the slots whose events have
completed, and `poll(wait=True)` waits for all of them. A flagged input raises
IndexOutOfRangeError naming it, and the flags are cleared so that the context stays usable.
Calls that return numpy arrays wait for the GPU anyway, so they poll with wait=True and raise
in the call itself.
"""

from __future__ import annotations

from collections import deque

import torch

from ecoinfer.errors import IndexOutOfRangeError
from ecoinfer.kernels.triton import index_clamp

Tensor = torch.Tensor

_RING = 4  # pinned flag slots in flight; a fifth call waits for the oldest slot's copy
# clamp and flag each GPU index input in one Triton kernel (kernels/triton/index_clamp.py);
# False: the torch form (four kernels per input), kept for A/B probes
FUSED = True


class DeferredIndexCheck:
    def __init__(self, sizes: dict[str, int], device: torch.device, source: str):
        self.sizes = dict(sorted(sizes.items()))
        self.names = list(self.sizes)
        self.source = source
        # int32: the Triton guard's programs store 1 into an input's flag, never anything else
        self.flags = torch.zeros(len(self.names), dtype=torch.int32, device=device)
        self._slots = torch.zeros((_RING, len(self.names)), dtype=torch.int32).pin_memory()
        self._events = [torch.cuda.Event() for _ in range(_RING)]
        self._pending: deque[int] = deque()  # slot numbers, oldest first
        self._next = 0

    def guard(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inputs with every index input clamped into range (new tensors: the caller's are
        left alone), flagging those that were not. Only device work: capturable."""
        out = dict(inputs)
        for i, name in enumerate(self.names):
            x = out.get(name)
            if x is None or x.numel() == 0:
                continue
            n = self.sizes[name]
            if FUSED and x.is_cuda and index_clamp.fits(x):  # one kernel, not four
                out[name] = index_clamp.clamp_flag(x, n, self.flags[i : i + 1])
                continue
            safe = x.clamp(-n, n - 1)
            self.flags[i : i + 1].bitwise_or_((safe != x).any().reshape(1).to(torch.int32))
            out[name] = safe
        return out

    def after_call(self, stream: torch.cuda.Stream) -> None:
        """Queue a non-blocking copy of the flags as they stand after this call."""
        if len(self._pending) == _RING:
            self._take(self._pending.popleft())
        slot = self._next
        self._next = (self._next + 1) % _RING
        self._slots[slot].copy_(self.flags, non_blocking=True)
        self._events[slot].record(stream)
        self._pending.append(slot)

    def poll(self, wait: bool = False) -> None:
        """Raise for any completed call whose flags are set (wait: for every queued call)."""
        while self._pending:
            slot = self._pending[0]
            if not wait and not self._events[slot].query():
                return
            self._pending.popleft()
            self._take(slot)

    def _take(self, slot: int) -> None:
        """Check one slot's flags once its copy has landed (no wait if it already has)."""
        self._events[slot].synchronize()
        bad = [n for n, f in zip(self.names, self._slots[slot].tolist()) if f]
        if not bad:
            return
        # clear the sticky flags (after the GPU work queued so far) and the slots still queued
        self.flags.zero_()
        self._pending.clear()
        name = bad[0]
        n = self.sizes[name]
        others = f" (also: {', '.join(bad[1:])})" if len(bad) > 1 else ""
        raise IndexOutOfRangeError(
            f"{self.source}: input '{name}' held an index outside the table it indexes "
            f"(valid: [{-n}, {n - 1}]) in a call since the last check{others}; the GPU clamped "
            "it, so that call's outputs are wrong: fix the input (as_torch=False calls raise "
            "in the call itself)"
        )
