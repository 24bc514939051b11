"""Triton flash attention (ecoinfer/kernels/triton/attention.py) under TRITON_INTERPRET=1
against the torch reference kernels of ecoinfer.Attention / MultiHeadAttention, in float32
from the same (rounded) inputs."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (conftest too)

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import compiled_run  # noqa: E402

pytest.importorskip("triton")

from ecoinfer.ir.graph import Node  # noqa: E402
from ecoinfer.ir.ops import get_schema  # noqa: E402
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel  # noqa: E402
from ecoinfer.kernels.triton import gemm_tactics  # noqa: E402
from ecoinfer.kernels.triton.attention import _split_heads, flash_configs  # noqa: E402
from ecoinfer.tune.tactics import _TACTICS, BuildInfo, TensorInfo  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
PRECISION = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
B, H, S, D = 2, 2, 17, 16
NEG = float("-inf")


def reference(node: Node, attrs: dict, xs: list[torch.Tensor | None]) -> torch.Tensor:
    fn = get_kernel(node.op_type, node.domain)
    assert fn is not None
    ctx = KernelContext(node, attrs, torch.device("cpu"), None, 21)  # type: ignore[arg-type]
    xs32 = [x.float() if x is not None and x.is_floating_point() else x for x in xs]
    return fn(ctx, xs32)[0]


def make(op: str, xs: list[torch.Tensor | None], cfg: dict | None = None, **attrs):  # noqa: ANN201
    names = ["q", "k", "v", "add", "keep"][: len(xs)]
    node = Node(op, [n if x is not None else "" for n, x in zip(names, xs)], ["y"], attrs)
    node.domain = "ecoinfer"
    full = {**get_schema(op, "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(x.shape), x.dtype) if x is not None else None for x in xs]
    dt = next(x.dtype for x in xs if x is not None)
    build = BuildInfo(torch.device("cpu"), PRECISION.get(dt, "float32"))
    return node, full, gemm_tactics.triton_flash(node, full, infos, cfg or {}, build)


def check(op: str, xs: list[torch.Tensor | None], cfg: dict | None = None, **attrs) -> None:
    node, full, run = make(op, xs, cfg, **attrs)
    assert run is not None
    (y,) = run(xs)
    ref = reference(node, full, xs)
    assert y.shape == ref.shape and y.dtype == xs[0].dtype  # type: ignore[union-attr]
    nan = torch.isnan(ref)
    # rows the graph leaves NaN (every score -inf, no nan_to_zero) stay NaN, the rest agree
    assert torch.equal(torch.isnan(y), nan)
    yv, rv = y.float()[~nan], ref[~nan]
    err = float((yv.double() - rv.double()).norm() / rv.double().norm())
    assert err <= TOL[y.dtype], f"rel error {err:.3e}"


def qkv(dtype: torch.dtype, sq: int = S, sk: int = S, d: int = D, dv: int = D):  # noqa: ANN201
    return (
        torch.randn(B, H, sq, d).to(dtype),
        torch.randn(B, H, sk, d).to(dtype),
        torch.randn(B, H, sk, dv).to(dtype),
    )


def padding_mask(dtype: torch.dtype, sk: int = S, b: int = B, pad: int = 7) -> torch.Tensor:
    """BERT's [b, 1, 1, Sk] additive mask: batch 1 has its last `pad` keys padded."""
    m = torch.zeros(b, 1, 1, sk)
    m[1, ..., sk - pad :] = torch.finfo(dtype).min
    return m.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "case",
    ["plain", "pad_mask", "full_mask", "causal", "causal_mask", "keep", "keep_row", "ktrans"],
)
def test_attention(dtype: torch.dtype, case: str) -> None:
    torch.manual_seed(0)
    q, k, v = qkv(dtype)
    attrs: dict = {"scale": D**-0.5}
    xs: list[torch.Tensor | None] = [q, k, v]
    if case == "pad_mask":
        xs.append(padding_mask(dtype))
    elif case == "full_mask":
        xs.append(torch.randn(B, 1, S, S).to(dtype))
    elif case == "causal":
        attrs["is_causal"] = 1
    elif case == "causal_mask":
        attrs["is_causal"] = 1
        xs.append(padding_mask(dtype))
    elif case == "keep":
        keep = torch.rand(B, 1, S, S) > 0.3
        keep[..., 0] = True
        xs += [None, keep]
    elif case == "keep_row":  # a [B, 1, 1, Sk] boolean key-padding mask: loaded as one row
        keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
        keep[0, ..., S - 5 :] = False
        xs += [None, keep]
    elif case == "ktrans":
        xs[1] = k.transpose(-1, -2).contiguous()
        attrs["k_transposed"] = 1
    check("Attention", xs, **attrs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_odd_shapes(dtype: torch.dtype) -> None:
    """Sq != Sk, a head size that is no power of 2, Dv != D, K/V shared over heads."""
    torch.manual_seed(1)
    q = torch.randn(B, H, 9, 24).to(dtype)
    k = torch.randn(B, 1, 21, 24).to(dtype)
    v = torch.randn(B, 1, 21, 40).to(dtype)
    check("Attention", [q, k, v, padding_mask(dtype, 21)], scale=0.3)
    check("Attention", [q, k, v], is_causal=1)


@pytest.mark.parametrize("nan_to_zero", [0, 1])
def test_attention_fully_masked_rows(nan_to_zero: int) -> None:
    """Rows with every score -inf: NaN like the ONNX graph, or 0 with nan_to_zero."""
    torch.manual_seed(2)
    q, k, v = qkv(torch.float32)
    keep = torch.rand(B, 1, S, S) > 0.5
    keep[0, 0, 3, :] = False
    keep[1, 0, 16, :] = False
    add = torch.zeros(B, 1, S, S)
    add[1, 0, 5, :] = NEG
    check("Attention", [q, k, v, add, keep], nan_to_zero=nan_to_zero)


def test_attention_finite_mask_fill() -> None:
    """mask_fill=-10000 (old exporters): a fully masked row is a uniform average."""
    torch.manual_seed(3)
    q, k, v = qkv(torch.float16)
    keep = torch.rand(B, 1, S, S) > 0.5
    keep[0, 0, 3, :] = False
    check("Attention", [q, k, v, None, keep], mask_fill=-10000.0, is_causal=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_attention_finfo_min_masks(dtype: torch.dtype) -> None:
    """Hugging Face style finfo.min masks: fully masked rows stay finite (a uniform average),
    as in the graph; the kernel must not overflow them to -inf (which would give NaN)."""
    torch.manual_seed(8)
    q, k, v = qkv(dtype)
    lo = torch.finfo(dtype).min
    add = torch.zeros(B, 1, S, S)
    add[0, 0, 2, :] = lo  # a query row with every key masked
    add[1, 0, :, 9:] = lo
    keep = torch.rand(B, 1, S, S) > 0.4
    keep[1, 0, 4, :] = False
    check("Attention", [q, k, v, add.to(dtype)], scale=0.25)
    check("Attention", [q, k, v, None, keep], mask_fill=lo, is_causal=1)
    # a long causal sequence (several key tiles) with a fully masked early row: the keys
    # past the diagonal count in it (finite fill), so they are not skipped
    q, k, v = (torch.randn(1, 1, 70, D).to(dtype) for _ in range(3))
    keep = torch.ones(1, 1, 70, 70, dtype=torch.bool)
    keep[0, 0, 5, :] = False
    check(
        "Attention",
        [q, k, v, None, keep],
        {"BLOCK_M": 16, "BLOCK_N": 16},
        mask_fill=lo,
        is_causal=1,
    )


def test_attention_every_proposed_config() -> None:
    torch.manual_seed(4)
    q, k, v = qkv(torch.float16, sq=33, sk=40)
    node, full, _ = make("Attention", [q, k, v])
    infos = [TensorInfo(tuple(t.shape), t.dtype) for t in (q, k, v)]
    cfgs = gemm_tactics._attention_configs(node, full, infos, None)  # type: ignore[arg-type]
    assert 2 <= len(cfgs) <= 12
    # one key block covers Sk = 40: persistent variants too (4 programs on the interpreter)
    assert any(c["PERSISTENT"] and c["BLOCK_N"] >= 40 for c in cfgs)
    for cfg in cfgs:
        check("Attention", [q, k, v, padding_mask(torch.float16, 40)], cfg=cfg, is_causal=1)


def test_flash_configs_sized() -> None:
    small = flash_configs(17, 17, 16, torch.float16)
    assert all(c.BLOCK_M <= 32 and c.BLOCK_N <= 32 for c in small)
    big = flash_configs(128, 128, 64, torch.float16)
    assert any(c.BLOCK_M == 128 for c in big) and len(big) >= 4


# ---------------------------------------------------------------------- MultiHeadAttention
def _packed(dtype: torch.dtype, dv: int = D) -> torch.Tensor:
    return torch.randn(B, S, 2 * H * D + H * dv).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask", ["none", "pad", "full", "causal"])
def test_mha_packed(dtype: torch.dtype, mask: str) -> None:
    torch.manual_seed(5)
    xs: list[torch.Tensor | None] = [_packed(dtype), None, None]
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": D**-0.5}
    if mask == "pad":
        xs.append(padding_mask(dtype))
    elif mask == "full":
        xs.append(torch.randn(B, 1, S, S).to(dtype))
    elif mask == "causal":
        attrs["is_causal"] = 1
    check("MultiHeadAttention", xs, **attrs)


@pytest.mark.parametrize("mask", ["none", "pad", "causal"])
@pytest.mark.parametrize("block_m", [16, 32])
def test_mha_persistent_tiles(mask: str, block_m: int) -> None:
    """PERSISTENT: 4 programs (the interpreter's SM count) x PROGS_PER_SM walk more tiles
    than there are programs (6 batches x 2 heads x 1-2 row blocks), one key block each."""
    torch.manual_seed(12)
    xs: list[torch.Tensor | None] = [torch.randn(6, S, 3 * H * D).half(), None, None]
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": D**-0.5}
    if mask == "pad":
        m = torch.zeros(6, 1, 1, S)
        m[::2, ..., S - 5 :] = torch.finfo(torch.float16).min
        xs.append(m.half())
    elif mask == "causal":
        attrs["is_causal"] = 1
    cfg = {"BLOCK_M": block_m, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2, "PERSISTENT": 1}
    for per_sm in (1, 2):
        check("MultiHeadAttention", xs, {**cfg, "PROGS_PER_SM": per_sm}, **attrs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mha_separate_projections(dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    q = torch.randn(B, 9, H * D).to(dtype)
    k = torch.randn(B, S, H * D).to(dtype)
    v = torch.randn(B, S, H * 8).to(dtype)
    attrs = {"num_heads": H, "head_size": D, "scale": 0.25}
    check("MultiHeadAttention", [q, k, v, padding_mask(dtype)], **attrs)


def test_mha_packed_dv_and_nan_to_zero() -> None:
    torch.manual_seed(7)
    qkv_ = _packed(torch.float32, dv=8)
    add = padding_mask(torch.float32)
    add[0, 0, 0, :] = NEG  # every key of batch 0 masked
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "nan_to_zero": 1}
    check("MultiHeadAttention", [qkv_, None, None, add], **attrs)


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
def test_mha_writes_codes_for_a_quantized_projection(qtype: str) -> None:
    """y_scale (engine/link_codes.py): Y written as codes of Y / y_scale, the ones the
    reference kernel makes from its float Y (at most one code apart where Y sits on a
    rounding boundary: the kernel rounds from float32, the reference from Y's dtype; float8
    codes near zero are finer than that difference, so those compare by relative error)."""
    torch.manual_seed(8)
    qkv_ = _packed(torch.float16)
    ys = torch.tensor(0.004)
    xs = [qkv_, None, None, padding_mask(torch.float16), None, ys]
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": D**-0.5, "y_qtype": qtype}
    names = ["q", "", "", "add", "", "ys"]
    node = Node("MultiHeadAttention", names, ["y"], attrs, domain="ecoinfer")
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(x.shape), x.dtype) if x is not None else None for x in xs]
    run = gemm_tactics.triton_flash(
        node, full, infos, {}, BuildInfo(torch.device("cpu"), "float16")
    )
    assert run is not None
    (y,) = run(xs)
    want = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}[qtype]
    fn = get_kernel("MultiHeadAttention", "ecoinfer")
    ref = fn(KernelContext(node, full, torch.device("cpu"), None, 21), xs)[0]  # type: ignore[arg-type, misc]
    assert y.dtype == ref.dtype == want and y.shape == ref.shape
    d = (y.float() - ref.float()).abs()
    if qtype == "int8":  # one code apart at most, and rarely
        assert float(d.max()) <= 1 and float((d > 0).float().mean()) < 0.05
    else:  # float8 codes near zero are finer than the fp16/fp32 rounding difference
        assert float(d.norm() / ref.float().norm()) < 2e-2  # one fp8 step is 6-12 %
    assert float(ref.float().abs().max()) >= (100 if qtype == "int8" else 200)  # real codes
    # SDPA tactics do not write codes: they decline
    from ecoinfer.tune import torch_tactics

    sdpa = torch_tactics._mha_maker("MATH")(
        node, full, infos, {}, BuildInfo(torch.device("cpu"), "float16")
    )
    assert sdpa is None


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("form", ["float16", "float32", "codes"])
def test_mha_quantized_qkv(qtype: str, form: str) -> None:
    """x_scale: attention on QKV's quantized value, from float QKV quantized as it loads or
    from the codes a linked QKV projection writes, against the reference kernel (which
    fake-quantizes, or dequantizes the codes, then runs the float attention)."""
    quantized_qkv_check(qtype, form, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_mha_quantized_qkv_compiled() -> None:
    """The same checks with the compiled kernel (this process runs the interpreter)."""
    from pathlib import Path

    code = (
        "import test_attention as t\n"
        "for q in ('int8', 'fp8e4m3'):\n"
        "    for f in ('float16', 'float32', 'codes'):\n"
        "        t.quantized_qkv_check(q, f, 'cuda')\n"
        "t.nan_mask_check('cuda')\n"
        "for f in ('float16', 'bfloat16', 'fp8_codes', 'separate'):\n"
        "    for p in (0, 1):\n"
        "        t.tma_check(f, p, 'cuda')\n"
        "for q in ('int8', 'fp8e4m3'):\n"
        "    for m in (0, 1):\n"
        "        t.dot8_check(q, m, 'cuda')\n"
        "print('ok')\n"
    )
    assert "ok" in compiled_run(["-c", code], cwd=Path(__file__).resolve().parent)


def test_mha_reads_and_writes_codes() -> None:
    """A linked chain's attention: FP8 QKV codes in, the output projection's codes out."""
    torch.manual_seed(14)
    qkv_ = _packed(torch.float32)
    x_scale, y_scale = torch.tensor(float(qkv_.abs().max()) / 448), torch.tensor(0.003)
    x = (qkv_ / x_scale).to(torch.float8_e4m3fn)
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": D**-0.5,
             "x_qtype": "fp8e4m3", "y_qtype": "fp8e4m3", "out_dtype": "float16"}  # fmt: skip
    xs = [x, None, None, padding_mask(torch.float16), None, y_scale, x_scale]
    node = Node("MultiHeadAttention", ["q", "", "", "add", "", "ys", "xs"], ["y"], attrs,
                domain="ecoinfer")  # fmt: skip
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(t.shape), t.dtype) if t is not None else None for t in xs]
    run = gemm_tactics.triton_flash(
        node, full, infos, {}, BuildInfo(torch.device("cpu"), "float16")
    )
    assert run is not None
    (y,) = run(xs)
    fn = get_kernel("MultiHeadAttention", "ecoinfer")
    ref = fn(KernelContext(node, full, torch.device("cpu"), None, 21), xs)[0]  # type: ignore[arg-type, misc]
    assert y.dtype == ref.dtype == torch.float8_e4m3fn
    assert float((y.float() - ref.float()).norm() / ref.float().norm()) < 2e-2
    assert float(ref.float().abs().max()) >= 100  # real codes


def quantized_qkv_check(qtype: str, form: str, device: str) -> None:
    torch.manual_seed(13)
    qkv_ = _packed(torch.float32) * 2
    qmax = 127.0 if qtype == "int8" else 448.0
    x_scale = torch.tensor(float(qkv_.abs().max()) / qmax)
    qdt = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}[qtype]
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": D**-0.5, "x_qtype": qtype}
    if form == "codes":
        v = qkv_ / x_scale
        x = (v.round().clamp(-127, 127) if qtype == "int8" else v).to(qdt)
        attrs["out_dtype"] = "float16"
    else:
        x = qkv_.to(getattr(torch, form))
    xs = [x, None, None, padding_mask(torch.float16), None, None, x_scale]
    node = Node("MultiHeadAttention", ["q", "", "", "add", "", "", "xs"], ["y"], attrs,
                domain="ecoinfer")  # fmt: skip
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(t.shape), t.dtype) if t is not None else None for t in xs]
    prec = "float32" if form == "float32" else "float16"
    dev = torch.device(device)
    run = gemm_tactics.triton_flash(node, full, infos, {}, BuildInfo(dev, prec))
    assert run is not None
    (y,) = run([t.to(dev) if t is not None else None for t in xs])
    y = y.cpu()
    fn = get_kernel("MultiHeadAttention", "ecoinfer")
    ref = fn(KernelContext(node, full, torch.device("cpu"), None, 21), xs)[0]  # type: ignore[arg-type, misc]
    want = torch.float32 if form == "float32" else torch.float16
    assert y.dtype == ref.dtype == want and y.shape == ref.shape
    err = float((y.double() - ref.double()).norm() / ref.double().norm())
    assert err < 3e-3, f"rel error {err:.2e}"
    # the quantization is real: attention on the unquantized QKV differs from it
    plain = {k: v for k, v in full.items() if k not in ("x_qtype", "out_dtype")}
    node2 = Node("MultiHeadAttention", ["q", "", "", "add"], ["y"], plain, domain="ecoinfer")
    exact = fn(KernelContext(node2, plain, torch.device("cpu"), None, 21),  # type: ignore[arg-type, misc]
               [qkv_.to(want), None, None, padding_mask(torch.float16)])[0]  # fmt: skip
    assert float((exact.double() - ref.double()).norm() / ref.double().norm()) > 3 * err
    # the SDPA tactics do not quantize: they decline
    from ecoinfer.tune import torch_tactics

    sdpa = torch_tactics._mha_maker("MATH")(
        node, full, infos, {}, BuildInfo(torch.device("cpu"), prec)
    )
    assert sdpa is None


def test_mha_packed_reads_views() -> None:
    """The packed buffer is split into heads by strides alone: no copy of Q/K/V."""
    qkv_ = _packed(torch.float16)
    k = _split_heads(qkv_[..., H * D : 2 * H * D], H)
    assert k.shape == (B, H, S, D)
    assert k.data_ptr() == qkv_.data_ptr() + H * D * qkv_.element_size()
    assert k.stride() == (S * 3 * H * D, D, 3 * H * D, 1)


def test_flash_declines() -> None:
    q = torch.randn(1, 1, 4, 512)
    assert make("Attention", [q, q, q])[2] is None  # head size over 256
    qi = torch.randn(1, 1, 4, 16)
    assert make("Attention", [qi.long(), qi.long(), qi.long()])[2] is None
    # a mask that would grow the scores
    assert make("Attention", [qi, qi, qi, torch.zeros(1, 1, 4, 9)])[2] is None
    bad = torch.randn(1, 4, 2 * 16 + 7)  # packed width not 2*H*D + H*Dv
    assert make("MultiHeadAttention", [bad], num_heads=2, head_size=8, packed=1)[2] is None


def test_flash_tactic_registered() -> None:
    for op in ("Attention", "MultiHeadAttention"):
        names = {t.name for t in _TACTICS[("ecoinfer", op)]}
        assert "triton_flash" in names


def nan_mask_check(device: str) -> None:
    """A NaN in an additive mask (row form, and one score of a full mask) makes exactly the
    reference's rows NaN: the log2 scaling of masks must not clamp it away."""
    from ecoinfer.kernels.triton.attention import flash_attention  # noqa: PLC0415

    torch.manual_seed(21)
    q, k, v = qkv(torch.float16)
    row = torch.zeros(B, 1, 1, S)
    row[0, 0, 0, 3] = float("nan")
    full = torch.zeros(B, 1, S, S)
    full[1, 0, 5, 2] = float("nan")
    for add in (row, full):
        xs = [q, k, v, add.to(torch.float16)]
        node, attrs, _ = make("Attention", xs, scale=0.25)
        ref = reference(node, attrs, xs)
        dev = [t.to(device) for t in xs]
        y = flash_attention(*dev[:3], dev[3], scale=0.25).cpu()
        assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))


def test_attention_nan_mask_stays_nan() -> None:
    nan_mask_check("cpu")


def _mha_run(
    xs: list, attrs: dict, cfg: dict, prec: str = "float16", device: str = "cpu"
) -> torch.Tensor | None:
    names = ["q", "k", "v", "add", "", "", "xs"][: len(xs)]
    names = [n if x is not None else "" for n, x in zip(names, xs)]
    node = Node("MultiHeadAttention", names, ["y"], attrs, domain="ecoinfer")
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    infos = [TensorInfo(tuple(t.shape), t.dtype) if t is not None else None for t in xs]
    dev = torch.device(device)
    run = gemm_tactics.triton_flash(node, full, infos, cfg, BuildInfo(dev, prec))
    if run is None:
        return None
    return run([t.to(dev) if t is not None else None for t in xs])[0].cpu()


def tma_check(form: str, persistent: int, device: str) -> None:
    """A TMA configuration takes the descriptors and gives the pointer loads' output (bit for
    bit on the interpreter; on a GPU the compiled kernels may order the math differently, so
    to 1e-3 there) and the reference's."""
    from ecoinfer.kernels.triton import attention

    used: list[bool] = []
    orig = attention._tma_operands

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        r = orig(*a, **k)
        used.append(r is not None)
        return r

    attention._tma_operands = spy  # type: ignore[assignment]
    try:
        torch.manual_seed(21)
        b, s = 3, 32
        d = 32 if form == "fp8_codes" else D  # codes take TMA tiles only dotting them (DOT8):
        mask = padding_mask(torch.float16, s, b, pad=9)  # a head of 32 columns or more
        attrs: dict = {"num_heads": H, "head_size": d, "scale": d**-0.5}
        if form == "separate":
            xs: list = [torch.randn(b, s, H * d).half() for _ in range(3)] + [mask.half()]
        elif form == "fp8_codes":
            qkv_ = torch.randn(b, s, 3 * H * d) * 2
            x_scale = torch.tensor(float(qkv_.abs().max()) / 448.0)
            xs = [(qkv_ / x_scale).to(torch.float8_e4m3fn), None, None, mask.half(), None, None]
            xs.append(x_scale)
            attrs.update(packed=1, x_qtype="fp8e4m3", out_dtype="float16")
        else:
            dt = getattr(torch, form)
            xs = [torch.randn(b, s, 3 * H * d).to(dt), None, None, mask.to(dt)]
            attrs["packed"] = 1
        base = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2}
        base["PERSISTENT"] = persistent
        if form == "fp8_codes":
            base["DOT8"] = 1
        prec = "bfloat16" if form == "bfloat16" else "float16"
        y_ptr = _mha_run(xs, attrs, base, prec, device)
        y_tma = _mha_run(xs, attrs, {**base, "TMA": 1}, prec, device)
    finally:
        attention._tma_operands = orig  # type: ignore[assignment]
    assert used == [True]  # the TMA configuration took the descriptors
    assert y_ptr is not None and y_tma is not None
    if device == "cpu":
        assert torch.equal(y_tma, y_ptr)
    else:
        diff = (y_tma.double() - y_ptr.double()).norm() / y_ptr.double().norm()
        assert float(diff) < 1e-3, float(diff)
    node = Node("MultiHeadAttention", ["q", "k", "v", "add", "", "", "xs"][: len(xs)], ["y"],
                attrs, domain="ecoinfer")  # fmt: skip
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    if form == "fp8_codes":  # the reference dequantizes the codes itself (no float32 copy)
        fn = get_kernel("MultiHeadAttention", "ecoinfer")
        ref = fn(KernelContext(node, full, torch.device("cpu"), None, 21), xs)[0]  # type: ignore[arg-type, misc]
    else:
        ref = reference(node, full, xs)
    err = float((y_tma.double() - ref.double()).norm() / ref.double().norm())
    assert err < (1.5e-2 if form == "bfloat16" else 3e-3), err


@pytest.mark.parametrize("form", ["float16", "bfloat16", "fp8_codes", "separate"])
@pytest.mark.parametrize("persistent", [0, 1])
def test_mha_tma_loads(form: str, persistent: int) -> None:
    tma_check(form, persistent, "cpu")


def test_mha_tma_only_where_tiles_fit() -> None:
    """TMA configurations are offered, and built, only where the sequences are whole tiles
    and a head is one power-of-two tile wide."""
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": 0.25}
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    build = BuildInfo(torch.device("cpu"), "float16")

    def offered(s: int, d: int = D) -> list[dict]:
        a = {**full, "head_size": d}
        node = Node("MultiHeadAttention", ["q"], ["y"], a, domain="ecoinfer")
        info = [TensorInfo((2, s, 3 * H * d), torch.float16)]
        return [c for c in gemm_tactics._attention_configs(node, a, info, build) if c.get("TMA")]

    assert offered(128) and all(128 % c["BLOCK_M"] == 0 for c in offered(128))
    assert offered(17) == [] and offered(128, d=24) == []
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2, "TMA": 1}
    xs = [torch.randn(2, 17, 3 * H * D).half()]
    assert _mha_run(xs, attrs, cfg) is None  # declined: 17 rows are not whole tiles
    assert _mha_run(xs, attrs, {**cfg, "TMA": 0}) is not None


def dot8_check(qtype: str, tma: int, device: str) -> None:
    """DOT8: with codes in, Q.K^T runs on the codes themselves (8-bit dot): the answer of the
    fp16 dot on the same codes (products exact either way), and the reference's."""
    torch.manual_seed(23)
    b, s, d = 3, 32, 32  # an 8-bit dot needs K = head size >= 32
    mask = padding_mask(torch.float16, s, b, pad=9)
    qkv_ = torch.randn(b, s, 3 * H * d) * 2
    qmax = 127.0 if qtype == "int8" else 448.0
    x_scale = torch.tensor(float(qkv_.abs().max()) / qmax)
    v = qkv_ / x_scale
    qdt = {"int8": torch.int8, "fp8e4m3": torch.float8_e4m3fn}[qtype]
    codes = (v.round().clamp(-127, 127) if qtype == "int8" else v).to(qdt)
    xs = [codes, None, None, mask.half(), None, None, x_scale]
    attrs = {"num_heads": H, "head_size": d, "scale": d**-0.5, "packed": 1, "x_qtype": qtype,
             "out_dtype": "float16"}  # fmt: skip
    base = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2}
    y16 = _mha_run(xs, attrs, base, "float16", device)
    y8 = _mha_run(xs, attrs, {**base, "DOT8": 1, "TMA": tma}, "float16", device)
    assert y16 is not None and y8 is not None and y8.dtype == torch.float16
    diff = float((y8.double() - y16.double()).norm() / y16.double().norm())
    assert diff < 1e-3, diff
    node = Node("MultiHeadAttention", ["q", "", "", "add", "", "", "xs"], ["y"], attrs,
                domain="ecoinfer")  # fmt: skip
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    fn = get_kernel("MultiHeadAttention", "ecoinfer")
    ref = fn(KernelContext(node, full, torch.device("cpu"), None, 21), xs)[0]  # type: ignore[arg-type, misc]
    err = float((y8.double() - ref.double()).norm() / ref.double().norm())
    assert err < 3e-3, err


@pytest.mark.parametrize("qtype", ["int8", "fp8e4m3"])
@pytest.mark.parametrize("tma", [0, 1])
def test_mha_dot8_on_codes(qtype: str, tma: int) -> None:
    dot8_check(qtype, tma, "cpu")


def test_mha_dot8_offered_for_codes_only() -> None:
    build = BuildInfo(torch.device("cpu"), "float16")
    attrs = {"num_heads": H, "head_size": D, "packed": 1, "scale": 0.25}
    full = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, **attrs}
    node = Node("MultiHeadAttention", ["q"], ["y"], full, domain="ecoinfer")
    floats = [TensorInfo((2, 32, 3 * H * D), torch.float16)]
    assert not [
        c for c in gemm_tactics._attention_configs(node, full, floats, build) if c.get("DOT8")
    ]
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2, "DOT8": 1}
    assert _mha_run([torch.randn(2, 32, 3 * H * D).half()], attrs, cfg) is None  # declined
    codes = _codes_configs(32)
    dot8 = [c for c in codes if c["DOT8"]]
    plain = [c for c in codes if not c["DOT8"] and not c["TMA"]]
    # the first DOT8_FLASH_CONFIGS tiles are offered dotting the codes too (pointer loads),
    # and up to four with TMA
    n = gemm_tactics.DOT8_FLASH_CONFIGS
    assert len(plain) > n and n == 4
    assert [{**c, "DOT8": 1} for c in plain[:n]] == [c for c in dot8 if not c["TMA"]]
    assert sum(c["TMA"] for c in dot8) == 4
    assert not [c for c in _codes_configs(16) if c["DOT8"]]  # an 8-bit dot needs K >= 32


def _codes_configs(d: int) -> list[dict]:
    """The flash configurations offered for packed FP8 QKV codes with heads of d columns."""
    attrs = {**get_schema("MultiHeadAttention", "ecoinfer").attrs, "num_heads": H, "head_size": d,
             "packed": 1, "scale": 0.25, "x_qtype": "fp8e4m3", "out_dtype": "float16"}  # fmt: skip
    node = Node("MultiHeadAttention", ["q", "", "", "", "", "", "xs"], ["y"], attrs,
                domain="ecoinfer")  # fmt: skip
    infos = [TensorInfo((2, 32, 3 * H * d), torch.float8_e4m3fn), None, None, None, None, None,
             TensorInfo((), torch.float32)]  # fmt: skip
    build = BuildInfo(torch.device("cpu"), "float16")
    return gemm_tactics._attention_configs(node, attrs, infos, build)


def test_mha_codes_take_tma_only_with_dot8() -> None:
    """With codes in, TMA tiles only dotting them (tma_codes_fit: widening a TMA-loaded K tile
    of codes miscompiles in Triton 3.6): no other TMA configuration is offered or built."""
    tma = [c for c in _codes_configs(32) if c["TMA"]]
    assert tma and all(c["DOT8"] for c in tma)
    assert not [c for c in _codes_configs(16) if c["TMA"]]  # no 8-bit dot on 16 columns: no TMA
    qkv_ = torch.randn(2, 32, 3 * H * 32)
    xs = [(qkv_ / 0.01).to(torch.float8_e4m3fn), None, None, None, None, None,
          torch.tensor(0.01)]  # fmt: skip
    attrs = {"num_heads": H, "head_size": 32, "packed": 1, "scale": 0.25, "x_qtype": "fp8e4m3",
             "out_dtype": "float16"}  # fmt: skip
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 2, "num_stages": 2, "TMA": 1}
    assert _mha_run(xs, attrs, cfg) is None  # declined
    assert _mha_run(xs, attrs, {**cfg, "DOT8": 1}) is not None
