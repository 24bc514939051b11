"""The index guard's Triton kernel (clamp into [-n, n-1], flag any index outside) against
torch's clamp, under Triton's CPU interpreter (tests/triton/conftest.py); with
TRITON_INTERPRET=0 and CUDA the same tests run on the GPU, and without CUDA
test_compile_sm90.py runs them to compile the kernel for sm_90 (its launches on CPU tensors
are compiled, not run)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)

import pytest  # noqa: E402
import torch  # noqa: E402

from ecoinfer.kernels.triton import index_clamp  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = torch.device("cuda" if not INTERPRET and torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("numel", [7, index_clamp.BLOCK, 3 * index_clamp.BLOCK + 5])
def test_clamps_and_flags(dtype, numel) -> None:  # noqa: ANN001
    n = 50
    g = torch.Generator().manual_seed(numel)
    x = torch.randint(-n, n, (numel,), generator=g, dtype=dtype).to(DEVICE)
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    y = index_clamp.clamp_flag(x, n, flag)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr() and flag.item() == 0
    bad = x.clone()
    bad[-1] = n  # one past the end, in the last (tail) block
    bad[0] = -n - 3
    y = index_clamp.clamp_flag(bad, n, flag)
    assert torch.equal(y, bad.clamp(-n, n - 1)) and flag.item() == 1
    assert bad[-1].item() == n  # the caller's tensor is left alone
    # sticky: a clean call later leaves the flag set; only the host clears it
    index_clamp.clamp_flag(x, n, flag)
    assert flag.item() == 1


def test_fits_only_contiguous_index_tensors() -> None:
    x = torch.zeros((4, 6), dtype=torch.int64, device=DEVICE)
    assert index_clamp.fits(x)
    assert not index_clamp.fits(x.t())
    assert not index_clamp.fits(x.float())
    assert not index_clamp.fits(x[:0])
