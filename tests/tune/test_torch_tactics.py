"""Torch-library tactics against the reference kernels (CPU here; CUDA ones under the gpu mark)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ecoinfer.engine.fingerprint import TOLERANCE
from ecoinfer.ir.graph import Node
from ecoinfer.ir.ops.registry import get_schema
from ecoinfer.tune import torch_tactics
from ecoinfer.tune.autotune import compare_outputs, reference_runfn
from ecoinfer.tune.tactics import BuildInfo, TensorInfo, tactics_for

CUDA = torch.cuda.is_available()
TT = torch_tactics.__name__
_PREC = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _bf16_ok() -> bool:
    try:
        a = torch.randn(4, 4, dtype=torch.bfloat16)
        torch.addmm(a[0], a, a)
        torch.nn.functional.conv2d(a.reshape(1, 1, 4, 4), a.reshape(1, 1, 4, 4))
        return True
    except RuntimeError:
        return False


CPU_DTYPES = [torch.float32] + ([torch.bfloat16] if _bf16_ok() else [])


def run_tactics(
    op: str,
    domain: str,
    xs: list[torch.Tensor | None],
    attrs: dict[str, Any],
    weights: tuple[int, ...] = (),
    device: str = "cpu",
    precision: str | None = None,
    outputs: tuple[str, ...] = ("y",),
) -> dict[str, str]:
    """Make and run every registered tactic of the op; name -> "ok", "n/a" or the failure."""
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(xs)]
    node = Node(op, names, list(outputs), dict(attrs), f"{op.lower()}0", domain)
    full = {**get_schema(op, domain).attrs, **attrs}
    dt = next(x.dtype for x in xs if x is not None)
    prec = precision or _PREC[dt]
    xs = [None if x is None else x.to(device) for x in xs]
    wmap = {names[i]: xs[i] for i in weights if xs[i] is not None}
    build = BuildInfo(torch.device(device), prec, wmap)
    infos = [
        None if x is None else TensorInfo(tuple(x.shape), x.dtype, names[i] in wmap)
        for i, x in enumerate(xs)
    ]
    ref = reference_runfn(node, full, build.device)(xs)
    wanted = [bool(o) for o in outputs]
    out: dict[str, str] = {}
    # only this module's tactics: the Triton ones have their own tests
    specs = [t for t in tactics_for(op, domain, device, prec) if t.make.__module__ == TT]
    assert specs, f"no tactics for {op} on {device}"
    for spec in specs:
        cfgs = spec.configs(node, full, infos, build) if spec.configs else [{}]
        for cfg in cfgs:
            name = spec.name + (str(cfg) if cfg else "")
            run = spec.make(node, full, infos, cfg, build)
            if run is None:
                out[name] = "n/a"
                continue
            before = [None if x is None else x.clone() for x in xs]
            try:
                ys = run(xs)
            except RuntimeError as e:  # a library refusing the case (tests decide if allowed)
                out[name] = f"raised {e}".splitlines()[0]
                continue
            ok, err, why = compare_outputs(ys, ref, wanted, TOLERANCE[prec])
            out[name] = "ok" if ok else why
            for x, b in zip(xs, before):
                assert x is None or torch.equal(x.nan_to_num(), b.nan_to_num()), (
                    f"{name} modified its input"
                )
            if ok and torch.device(device).type == "cuda":
                # the same numbers again: no state kept between calls
                torch.testing.assert_close(run(xs)[0], ys[0], equal_nan=True)
    return out


def _all_ok(res: dict[str, str], must: set[str], may_raise: tuple[str, ...] = ()) -> None:
    """No tactic wrong, the `must` ones right; those in may_raise may refuse by raising."""
    bad = {
        k: v
        for k, v in res.items()
        if v not in ("ok", "n/a") and not (k in may_raise and v.startswith("raised"))
    }
    assert not bad, bad
    missing = {m for m in must if res.get(m) != "ok"}
    assert not missing, (missing, res)


# ---------------------------------------------------------------------- FusedGemm
GEMM_ACTS = [
    ("", []),
    ("Relu", []),
    ("Gelu", [0.0]),
    ("Gelu", [1.0]),
    ("Sigmoid", []),
    ("Tanh", []),
    ("Clip", [0.0, 6.0]),
    ("Clip", [float("nan"), 1.0]),
    ("HardSigmoid", [0.3, 0.4]),
    ("HardSwish", []),
    ("LeakyRelu", [0.1]),
    ("Elu", [0.7]),
    ("Swish", [1.0]),
    ("Swish", [1.702]),
]


@pytest.mark.parametrize("act,params", GEMM_ACTS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_gemm_activations(act: str, params: list[float], dtype: torch.dtype) -> None:
    a, w, b = torch.randn(2, 5, 16), torch.randn(24, 16) / 4, torch.randn(24)
    attrs = {"trans_b": 1, "activation": act, "activation_params": params}
    res = run_tactics("FusedGemm", "ecoinfer", [x.to(dtype) for x in (a, w, b)], attrs, (1, 2))
    _all_ok(res, {"addmm", "linear"})


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(
    "a_shape,trans_b,bias,res_shape,weights",
    [
        ((7, 16), 0, True, (7, 24), (1, 2)),  # [K, N] weight: linear packs it
        ((3, 7, 16), 1, False, (3, 7, 24), (1,)),  # residual without bias
        ((16,), 0, True, None, (1, 2)),  # 1-D A
        ((2, 3, 16), 0, True, (24,), ()),  # B an activation; residual broadcasts
        ((4, 16), 1, True, (1, 24), (1,)),
    ],
)
def test_gemm_forms(
    dtype: torch.dtype,
    a_shape: tuple[int, ...],
    trans_b: int,
    bias: bool,
    res_shape: tuple[int, ...] | None,
    weights: tuple[int, ...],
) -> None:
    w = torch.randn(24, 16) if trans_b else torch.randn(16, 24)
    xs = [torch.randn(a_shape), w / 4, torch.randn(24) if bias else None]
    if res_shape is not None:
        xs.append(torch.randn(res_shape))
    xs = [None if x is None else x.to(dtype) for x in xs]
    attrs = {"trans_b": trans_b, "activation": "Relu", "activation_params": []}
    _all_ok(run_tactics("FusedGemm", "ecoinfer", xs, attrs, weights), {"addmm", "linear"})


def test_gemm_not_applicable() -> None:
    # mixed dtypes: no single torch call computes it as the reference does
    xs = [torch.randn(4, 8), torch.randn(8, 3).double()]
    node = Node("FusedGemm", ["a", "b"], ["y"], {}, "g", "ecoinfer")
    infos = [TensorInfo(tuple(x.shape), x.dtype) for x in xs]
    build = BuildInfo(torch.device("cpu"), "float32")
    for spec in tactics_for("FusedGemm", "ecoinfer", "cpu", "float32"):
        assert spec.make(node, {"trans_b": 0}, infos, {}, build) is None


# ---------------------------------------------------------------------- FusedConv
CONV_CASES = [
    # x shape, w shape, attrs, bias, z
    ((2, 4, 9, 9), (6, 4, 3, 3), {"pads": [1, 1, 1, 1], "activation": "Relu"}, True, False),
    (
        (2, 4, 9, 9),
        (6, 2, 3, 3),
        {"group": 2, "strides": [2, 2], "pads": [0, 0, 1, 1]},
        True,
        False,
    ),
    (
        (1, 4, 8, 8),
        (4, 4, 3, 3),
        {"pads": [2, 2, 2, 2], "dilations": [2, 2], "post_activation": "Relu"},
        True,
        True,
    ),
    ((2, 4, 8, 8), (8, 4, 1, 1), {"activation": "Clip", "activation_params": [0, 6]}, False, True),
    ((2, 3, 11), (5, 3, 3), {"pads": [1, 2], "activation": "HardSwish"}, True, False),
]


def _conv_inputs(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    attrs: dict[str, Any],
    bias: bool,
    z: bool,
    dtype: torch.dtype,
) -> tuple[list[torch.Tensor | None], dict[str, Any]]:
    nd = len(x_shape) - 2
    full: dict[str, Any] = {
        "kernel_shape": list(w_shape[2:]),
        "strides": [1] * nd,
        "dilations": [1] * nd,
        "pads": [0] * (2 * nd),
        **attrs,
    }
    st, dl, pd = full["strides"], full["dilations"], full["pads"]
    out = [x_shape[0], w_shape[0]]
    for i in range(nd):
        eff = (w_shape[2 + i] - 1) * dl[i] + 1
        out.append((x_shape[2 + i] + pd[i] + pd[nd + i] - eff) // st[i] + 1)
    xs: list[torch.Tensor | None] = [torch.randn(x_shape), torch.randn(w_shape) / 4]
    xs.append(torch.randn(w_shape[0]) if bias else None)
    if z:
        xs.append(torch.randn(out))
    return [None if t is None else t.to(dtype) for t in xs], full


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_conv_nchw(case: int, dtype: torch.dtype) -> None:
    xs, attrs = _conv_inputs(*CONV_CASES[case], dtype)
    res = run_tactics("FusedConv", "ecoinfer", xs, attrs, (1, 2))
    nd = xs[0].dim() - 2
    _all_ok(res, {"conv", "conv_channels_last"} if nd == 2 else {"conv"})
    if nd != 2:
        assert res["conv_channels_last"] == "n/a"


STEM = ((2, 3, 16, 16), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3], "activation": "Relu"}, True, False)  # fmt: skip


def _direct_conv(xs: list, attrs: dict, layout: str):  # noqa: ANN202
    """Inputs in `layout` and what a maker needs (node, full attrs, infos, CPU build with W
    and B as weights), for conv tactics registered for CUDA made and run on the CPU."""
    if layout == "NHWC":
        xs = [x.permute(0, 2, 3, 1).contiguous() if x is not None and x.dim() == 4 else x for x in xs]  # fmt: skip
        attrs = {**attrs, "layout": "NHWC"}
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(xs)]
    node = Node("FusedConv", names, ["y"], dict(attrs), "conv0", "ecoinfer")
    full = {**get_schema("FusedConv", "ecoinfer").attrs, **attrs}
    build = BuildInfo(torch.device("cpu"), "float32", {"in1": xs[1], "in2": xs[2]})
    infos = [
        None if x is None else TensorInfo(tuple(x.shape), x.dtype, i in (1, 2))
        for i, x in enumerate(xs)
    ]
    return xs, node, full, infos, build


def _matches_reference(run, xs: list, node: Node, full: dict) -> None:  # noqa: ANN001
    assert run is not None
    y = run(xs)[0]
    ref = reference_runfn(node, full, torch.device("cpu"))(xs)[0]
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", ["stem", 0, 1, 2, 3])
def test_conv_pad_channels(layout: str, case: str | int) -> None:
    """The zero-channel variant (registered for CUDA) made and run on the CPU: same numbers as
    the reference; not applicable to grouped convs or channel counts already a multiple of 8."""
    xs, attrs = _conv_inputs(*(STEM if case == "stem" else CONV_CASES[case]), torch.float32)
    xs, node, full, infos, build = _direct_conv(xs, attrs, layout)
    run = torch_tactics._conv_maker("pad_channels")(node, full, infos, {}, build)
    if case == 1 or xs[0].dim() != 4:  # grouped / 1-D
        assert run is None
        return
    _matches_reference(run, xs, node, full)
    wide = list(xs)
    wide[1] = torch.cat([xs[1]] * 2, dim=-1 if layout == "NHWC" else 1)  # 8 (or 6) channels
    wide[0] = torch.cat([xs[0]] * 2, dim=-1 if layout == "NHWC" else 1)
    infos[0] = TensorInfo(tuple(wide[0].shape), torch.float32, False)
    infos[1] = TensorInfo(tuple(wide[1].shape), torch.float32, True)
    build = BuildInfo(torch.device("cpu"), "float32", {"in1": wide[1], "in2": xs[2]})
    if wide[1].shape[-1 if layout == "NHWC" else 1] % 8 == 0:
        assert torch_tactics._conv_maker("pad_channels")(node, full, infos, {}, build) is None


S2D_CASES = [
    # the ResNet stem: 7x7, stride 2, pad 3, ReLU
    ((2, 3, 20, 20), (8, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3], "activation": "Relu"}, True),
    # odd padded sizes, asymmetric pads, no bias, one channel, a 3x3 kernel
    ((1, 1, 21, 19), (4, 1, 3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 2]}, False),
    # a 5x4 kernel and a post-activation
    ((2, 4, 13, 16), (6, 4, 5, 4), {"strides": [2, 2], "pads": [2, 1, 2, 2], "post_activation": "Relu"}, True),
]  # fmt: skip


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", range(len(S2D_CASES)))
def test_conv_space_to_depth(layout: str, case: int) -> None:
    """The stride-2 conv as a stride-1 conv on 2x2 blocks (registered for CUDA), made and run
    on the CPU: the reference's numbers; declined where it does not apply."""
    xshape, wshape, extra, bias = S2D_CASES[case]
    xs, attrs = _conv_inputs(xshape, wshape, extra, bias, False, torch.float32)
    xs, node, full, infos, build = _direct_conv(xs, attrs, layout)
    _matches_reference(torch_tactics._make_conv_s2d(node, full, infos, {}, build), xs, node, full)
    for other in ({"strides": [1, 1]}, {"dilations": [2, 2]}):  # not stride 2 / dilated
        o = {**full, **other}
        assert torch_tactics._make_conv_s2d(node, o, infos, {}, build) is None


def test_conv_space_to_depth_declines_many_channels() -> None:
    xs, attrs = _conv_inputs((1, 8, 9, 9), (4, 8, 3, 3), {"strides": [2, 2]}, True, False, torch.float32)  # fmt: skip
    xs, node, full, infos, build = _direct_conv(xs, attrs, "NCHW")
    assert torch_tactics._make_conv_s2d(node, full, infos, {}, build) is None


@pytest.mark.parametrize("case", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_conv_nhwc(case: int, dtype: torch.dtype) -> None:
    xs, attrs = _conv_inputs(*CONV_CASES[case], dtype)
    x, w = xs[0], xs[1]
    nhwc = [x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous(), xs[2]]
    if len(xs) > 3:
        nhwc.append(xs[3].permute(0, 2, 3, 1).contiguous())
    res = run_tactics("FusedConv", "ecoinfer", nhwc, {**attrs, "layout": "NHWC"}, (1, 2))
    _all_ok(res, {"conv"} | ({"addmm_1x1"} if case == 3 else set()))  # case 3: 1x1, stride 1
    if case != 3:
        assert res["addmm_1x1"] == "n/a"
    assert res["conv_channels_last"] == "n/a"  # the plain variant is channels-last already


# ---------------------------------------------------------------------- attention
def _qkv(b, h, sq, sk, d, dtype, dv=None):  # noqa: ANN001, ANN202
    return [
        torch.randn(b, h, sq, d, dtype=dtype),
        torch.randn(b, h, sk, d, dtype=dtype),
        torch.randn(b, h, sk, dv or d, dtype=dtype),
    ]


def _dead_add_mask(b: int, sq: int, sk: int, dtype: torch.dtype) -> torch.Tensor:
    m = torch.zeros(b, 1, sq, sk, dtype=dtype)
    m[..., sk // 2 :] = float("-inf")
    m[0, 0, 1, :] = float("-inf")  # a row with every key masked
    return m


def _keep(b: int, sq: int, sk: int, dead: bool = True) -> torch.Tensor:
    k = torch.rand(b, 1, sq, sk) > 0.3
    k[..., 0] = True
    if dead:
        k[-1, 0, 2, :] = False
    return k


ATT_SDPA = {"sdpa_flash", "sdpa_math"}


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "scaled_dv",
        "causal",
        "causal_rect",
        "k_transposed",
        "add_dead",
        "add_dead_nan_to_zero",
        "keep",
        "keep_add_causal",
        "finite_fill_causal",
        "padding_mask",
    ],
)
def test_attention(name: str, dtype: torch.dtype) -> None:
    b, h, s, d = 2, 3, 6, 8
    attrs: dict[str, Any] = {"scale": 0.35}
    xs: list[torch.Tensor | None] = _qkv(b, h, s, s, d, dtype)
    if name == "scaled_dv":
        xs = _qkv(b, h, s, 9, d, dtype, dv=5)
    elif name == "causal":
        attrs["is_causal"] = 1
    elif name == "causal_rect":
        xs = _qkv(b, h, 4, 7, d, dtype)
        attrs["is_causal"] = 1
    elif name == "k_transposed":
        xs[1] = xs[1].transpose(-1, -2).contiguous()
        attrs["k_transposed"] = 1
    elif name == "add_dead":
        xs.append(_dead_add_mask(b, s, s, dtype))
    elif name == "add_dead_nan_to_zero":
        xs.append(_dead_add_mask(b, s, s, dtype))
        attrs["nan_to_zero"] = 1
    elif name == "keep":
        xs += [None, _keep(b, s, s)]
        attrs["nan_to_zero"] = 1
    elif name == "keep_add_causal":
        xs += [torch.randn(1, h, s, s, dtype=dtype), _keep(b, s, s)]
        attrs["is_causal"] = 1
    elif name == "finite_fill_causal":
        attrs.update(is_causal=1, mask_fill=float(torch.finfo(dtype).min))
    elif name == "padding_mask":
        m = torch.zeros(b, 1, 1, s, dtype=dtype)
        m[1, ..., 4:] = torch.finfo(dtype).min  # HF's (1 - mask) * min
        xs.append(m)
    res = run_tactics("Attention", "ecoinfer", xs, attrs)
    _all_ok(res, {"sdpa_math"} if name == "scaled_dv" else ATT_SDPA)
    if name == "scaled_dv":
        assert res["sdpa_flash"] == "n/a"  # flash needs Dv == D


def test_attention_finite_fill_with_keep_not_applicable() -> None:
    b, h, s, d = 2, 2, 5, 4
    xs = [*_qkv(b, h, s, s, d, torch.float32), None, _keep(b, s, s)]
    res = run_tactics("Attention", "ecoinfer", xs, {"mask_fill": -1e9})
    assert all(v == "n/a" for v in res.values()), res
    # a broadcast head dim (MatMul-style) is not SDPA's contract either
    q, k, v = _qkv(b, h, s, s, d, torch.float32)
    res = run_tactics("Attention", "ecoinfer", [q, k[:, :1], v[:, :1]], {})
    assert all(v == "n/a" for v in res.values()), res


def test_attention_constant_mask_built_once() -> None:
    b, h, s, d = 1, 2, 5, 4
    keep = _keep(b, s, s, dead=False)
    xs = [*_qkv(b, h, s, s, d, torch.float32), None, keep]
    res = run_tactics("Attention", "ecoinfer", xs, {"nan_to_zero": 1}, weights=(4,))
    _all_ok(res, ATT_SDPA)
    node = Node("Attention", ["q", "k", "v", "", "m"], ["y"], {}, "a", "ecoinfer")
    infos = [TensorInfo(tuple(x.shape), x.dtype, i == 4) if x is not None else None for i, x in enumerate(xs)]  # fmt: skip
    plan = torch_tactics._mask_plan(
        node, {}, infos, BuildInfo(torch.device("cpu"), "float32", {"m": keep}), s, s
    )
    assert plan is not None and plan.static is not None
    assert plan.static[1] is None  # no dead row: nothing to fix at run time


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("packed", [0, 1])
@pytest.mark.parametrize("mask", ["none", "add", "keep", "causal"])
def test_multi_head_attention(packed: int, mask: str, dtype: torch.dtype) -> None:
    b, s, h, d, dv = 2, 7, 3, 8, 8
    attrs: dict[str, Any] = {"num_heads": h, "head_size": d, "packed": packed, "scale": d**-0.5}
    if packed:
        xs: list[torch.Tensor | None] = [
            torch.randn(b, s, 2 * h * d + h * dv, dtype=dtype),
            None,
            None,
        ]
    else:
        xs = [
            torch.randn(b, s, h * d, dtype=dtype),
            torch.randn(b, s, h * d, dtype=dtype),
            torch.randn(b, s, h * dv, dtype=dtype),
        ]
    if mask == "add":
        xs.append(_dead_add_mask(b, s, s, dtype))
    elif mask == "keep":
        xs += [None, _keep(b, s, s)]
        attrs["nan_to_zero"] = 1
    elif mask == "causal":
        attrs["is_causal"] = 1
    res = run_tactics("MultiHeadAttention", "ecoinfer", xs, attrs)
    _all_ok(res, ATT_SDPA)


def test_multi_head_attention_other_value_size() -> None:
    b, s, h, d, dv = 2, 5, 2, 8, 4
    attrs = {"num_heads": h, "head_size": d, "packed": 1, "scale": 0.3}
    res = run_tactics(
        "MultiHeadAttention", "ecoinfer", [torch.randn(b, s, h * (2 * d + dv))], attrs
    )
    assert res == {"sdpa_flash": "n/a", "sdpa_math": "ok"}


# ---------------------------------------------------------------------- norms
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(dtype: torch.dtype, axis: int, bias: bool) -> None:
    x = torch.randn(3, 5, 16, dtype=dtype) * 3 + 1
    norm = list(x.shape[axis:])
    xs = [x, torch.randn(norm, dtype=dtype), torch.randn(norm, dtype=dtype) if bias else None]
    res = run_tactics("LayerNormalization", "", xs, {"axis": axis, "epsilon": 1e-5}, (1, 2))
    _all_ok(res, {"torch_layer_norm"})


def test_layer_norm_not_applicable() -> None:
    x = torch.randn(3, 16)
    # the statistics outputs are wanted
    res = run_tactics(
        "LayerNormalization", "", [x, torch.ones(16)], {}, outputs=("y", "mean", "inv")
    )
    assert res["torch_layer_norm"] == "n/a"
    # a scale that only broadcasts
    res = run_tactics("LayerNormalization", "", [x, torch.ones(1)], {})
    assert res["torch_layer_norm"] == "n/a"


@pytest.mark.skipif(not hasattr(torch.nn.functional, "rms_norm"), reason="torch < 2.4")
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_rms_norm(dtype: torch.dtype) -> None:
    x = torch.randn(4, 6, 32, dtype=dtype)
    res = run_tactics("RMSNormalization", "", [x, torch.randn(32, dtype=dtype)], {"epsilon": 1e-6})
    _all_ok(res, {"torch_rms_norm"})


def test_activation_inplace_matches_reference() -> None:
    from ecoinfer.kernels.torch_ops.activation import apply_activation  # noqa: PLC0415

    x = torch.randn(1000) * 4
    for name, params in GEMM_ACTS:
        want = apply_activation(x.clone(), name, params)
        got = torch_tactics.act_inplace(x.clone(), name, params)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f"{name} {params}")


def test_registered_names() -> None:
    cpu = {t.name for t in tactics_for("FusedGemm", "ecoinfer", "cpu", "float32")}
    cuda = {t.name for t in tactics_for("FusedGemm", "ecoinfer", "cuda", "float16")}
    assert {"addmm", "linear"} <= cpu and "cublas_addmm" not in cpu
    assert {"cublas_addmm", "linear", "cublaslt_bias_act"} <= cuda
    conv = {t.name for t in tactics_for("FusedConv", "ecoinfer", "cuda", "float16")}
    assert {"cudnn", "cudnn_channels_last", "cudnn_fused_relu"} <= conv
    att = {t.name for t in tactics_for("Attention", "ecoinfer", "cuda", "float16")}
    assert {"sdpa_flash", "sdpa_efficient", "sdpa_math"} <= att
    assert {t.name for t in tactics_for("Attention", "ecoinfer", "cpu", "float32")} >= ATT_SDPA
    assert all(
        t.make.__module__ == TT
        for t in tactics_for("FusedGemm", "ecoinfer", "cuda", "float16")
        if t.name in ("cublas_addmm", "linear", "cublaslt_bias_act")
    )


def test_gelu_epilogue_only_for_half_precision() -> None:
    """The cuBLASLt epilogue's tanh GELU stands in for exact GELU in FP16/BF16 layers only."""
    node = Node("FusedGemm", ["a", "b", "c"], ["y"], {}, "g", "ecoinfer")
    infos = [TensorInfo((8, 16), torch.float16), TensorInfo((16, 4), torch.float16, True)]
    infos.append(TensorInfo((4,), torch.float16, True))
    exact = {"activation": "Gelu", "activation_params": [0.0]}
    for precision, made in (("float16", True), ("bfloat16", True), ("float32", False)):
        build = BuildInfo(torch.device("cpu"), precision, {})
        run = torch_tactics._make_addmm_act(node, exact, infos, {}, build)
        assert (run is not None) == made, precision


# ---------------------------------------------------------------------- GPU
_DT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("act,params", [("", []), ("Relu", []), ("Gelu", [0.0]), ("Gelu", [1.0])])
@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32", "tf32"])
def test_gpu_gemm(act: str, params: list[float], precision: str) -> None:
    dt = _DT.get(precision, torch.float32)
    xs = [torch.randn(4, 64, 256), torch.randn(512, 256) / 16, torch.randn(512)]
    xs.append(torch.randn(4, 64, 512))
    attrs = {"trans_b": 1, "activation": act, "activation_params": params}
    xs = [x.to(dt) for x in xs]
    res = run_tactics("FusedGemm", "ecoinfer", xs, attrs, (1, 2), "cuda", precision)
    must = {"cublas_addmm", "linear"}
    half = precision in ("float16", "bfloat16")
    if act == "Relu" or (act == "Gelu" and (params[0] or half)):
        must.add("cublaslt_bias_act")  # exact GELU: the tanh epilogue, in half precision only
    _all_ok(res, must)
    if act == "Gelu" and not params[0] and not half:
        assert res["cublaslt_bias_act"] == "n/a"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32", "tf32"])
def test_gpu_conv(layout: str, precision: str) -> None:
    dt = _DT.get(precision, torch.float32)
    for case in (0, 1, 2, 3):  # 0: conv+bias+relu, 2: conv+bias+add+relu
        xs, attrs = _conv_inputs(*CONV_CASES[case], dt)
        if layout == "NHWC":
            xs = [x.permute(0, 2, 3, 1).contiguous() if x is not None and x.dim() == 4 else x for x in xs]  # fmt: skip
            attrs = {**attrs, "layout": "NHWC"}
        res = run_tactics("FusedConv", "ecoinfer", xs, attrs, (1, 2), "cuda", precision)
        must = {"cudnn"} | ({"cudnn_channels_last"} if layout == "NCHW" else set())
        must |= {"cublas_1x1"} if layout == "NHWC" and case == 3 else set()
        must |= {"cudnn_pad_channels"} if case != 1 else set()  # C=4: zero channels up to 8
        if case == 1:  # grouped: space-to-depth declines
            assert res.get("cudnn_space_to_depth") == "n/a", res
        _all_ok(res, must, may_raise=("cudnn_fused_relu",))
        if case in (0, 2) and precision == "float16":
            assert res.get("cudnn_fused_relu") == "ok", res  # the ResNet FP16 fast path


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("mask", ["none", "causal", "add", "keep", "padding"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_attention(mask: str, dtype: torch.dtype) -> None:
    b, h, s, d = 2, 4, 64, 64
    xs: list[torch.Tensor | None] = _qkv(b, h, s, s, d, dtype)
    attrs: dict[str, Any] = {"scale": d**-0.5}
    if mask == "causal":
        attrs["is_causal"] = 1
    elif mask == "add":
        xs.append(_dead_add_mask(b, s, s, dtype))
    elif mask == "keep":
        xs += [None, _keep(b, s, s)]
        attrs["nan_to_zero"] = 1
    elif mask == "padding":
        m = torch.zeros(b, 1, 1, s, dtype=dtype)
        m[1, ..., 40:] = torch.finfo(dtype).min
        xs.append(m)
    res = run_tactics("Attention", "ecoinfer", xs, attrs, device="cuda")
    _all_ok(res, {"sdpa_math"}, may_raise=("sdpa_cudnn",))
    if dtype != torch.float32 and mask in ("none", "causal"):
        assert res["sdpa_flash"] == "ok", res
    if mask != "none":
        assert res["sdpa_efficient"] == "ok", res


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("packed", [0, 1])
def test_gpu_multi_head_attention(packed: int) -> None:
    b, s, h, d = 4, 128, 12, 64
    attrs = {"num_heads": h, "head_size": d, "packed": packed, "scale": d**-0.5}
    if packed:
        xs: list[torch.Tensor | None] = [
            torch.randn(b, s, 3 * h * d, dtype=torch.float16),
            None,
            None,
        ]
    else:
        xs = [torch.randn(b, s, h * d, dtype=torch.float16) for _ in range(3)]
    m = torch.zeros(b, 1, 1, s, dtype=torch.float16)
    m[0, ..., 100:] = torch.finfo(torch.float16).min
    xs.append(m)
    res = run_tactics("MultiHeadAttention", "ecoinfer", xs, attrs, device="cuda")
    _all_ok(res, {"sdpa_math", "sdpa_efficient"}, may_raise=("sdpa_cudnn",))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_gpu_stem_conv_tactics(layout: str) -> None:
    """The RGB stem (7x7/2, 3 channels) in FP16: zero channels and space-to-depth both right."""
    xshape, wshape, extra, bias = S2D_CASES[0]
    xs, attrs = _conv_inputs((4, 3, 64, 64), wshape, extra, bias, False, torch.float16)
    if layout == "NHWC":
        xs = [x.permute(0, 2, 3, 1).contiguous() if x is not None and x.dim() == 4 else x for x in xs]  # fmt: skip
        attrs = {**attrs, "layout": "NHWC"}
    res = run_tactics("FusedConv", "ecoinfer", xs, attrs, (1, 2), "cuda", "float16")
    _all_ok(res, {"cudnn", "cudnn_pad_channels", "cudnn_space_to_depth"}, ("cudnn_fused_relu",))


def test_flag_wrappers_set_and_restore_torch_flags() -> None:
    """cudnn.benchmark and the TF32 switches are set for the call only, also when it raises."""
    cd, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cd.benchmark, mm.allow_tf32, cd.allow_tf32)
    seen = []

    def run(xs):  # noqa: ANN001, ANN202
        seen.append((cd.benchmark, mm.allow_tf32, cd.allow_tf32))
        if xs is None:
            raise RuntimeError("boom")
        return xs

    torch_tactics._cudnn_benchmark(run)([])
    torch_tactics._with_precision(run, BuildInfo(torch.device("cuda"), "tf32"))([])
    fp32 = torch_tactics._with_precision(torch_tactics._cudnn_benchmark(run), BuildInfo(torch.device("cuda"), "float32"))  # fmt: skip
    fp32([])
    with pytest.raises(RuntimeError):
        torch_tactics._cudnn_benchmark(run)(None)  # type: ignore[arg-type]
    assert seen[0][0] is True and seen[1][1:] == (True, True) and seen[2] == (True, False, False)
    assert (cd.benchmark, mm.allow_tf32, cd.allow_tf32) == before
