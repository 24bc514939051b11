"""Torch kernels for control flow: run the nested graphs with the outer scope visible."""

from __future__ import annotations

import torch

from ecoinfer.kernels.torch_ops.registry import KernelContext, kernel

Tensor = torch.Tensor


@kernel("If")
def _if(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    cond = bool(xs[0].reshape(-1)[0])
    return ctx.run_graph(ctx.attr("then_branch" if cond else "else_branch"), {})


@kernel("Loop")
def _loop(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    body = ctx.attr("body")
    max_trip = int(xs[0].reshape(-1)[0]) if xs[0] is not None else None
    cond = bool(xs[1].reshape(-1)[0]) if xs[1] is not None else True
    carried = [x for x in xs[2:]]
    names = body.input_names  # iter_num, cond, carried...
    n_carried = len(carried)
    scans: list[list[Tensor]] = [[] for _ in range(len(body.outputs) - 1 - n_carried)]
    i = 0
    dev = ctx.device
    while cond and (max_trip is None or i < max_trip):
        feeds = {
            names[0]: torch.tensor(i, dtype=torch.int64, device=dev),
            names[1]: torch.tensor(cond, dtype=torch.bool, device=dev),
        }
        feeds.update(dict(zip(names[2:], carried)))
        outs = ctx.run_graph(body, feeds)
        cond = bool(outs[0].reshape(-1)[0])
        carried = outs[1 : 1 + n_carried]
        for k, s in enumerate(outs[1 + n_carried :]):
            scans[k].append(s)
        i += 1
    results = list(carried)
    for k, s in enumerate(scans):
        if s:
            results.append(torch.stack(s))
        else:
            # zero iterations: an empty scan output of the body's declared element type
            from ecoinfer.ir.dtypes import to_torch  # noqa: PLC0415

            decl = body.outputs[1 + n_carried + k]
            dt = to_torch(decl.dtype) if decl.dtype else torch.float32
            shape = [0] + [d if isinstance(d, int) else 0 for d in (decl.shape or ())]
            results.append(torch.zeros(shape, dtype=dt, device=dev))
    return results


@kernel("Scan")
def _scan(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    if ctx.opset < 9:
        return _scan8(ctx, xs)
    return _scan9(ctx, xs)


def _scan8(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    # Scan-8 carries a leading batch axis and an optional sequence_lens input: run the
    # Scan-9 logic once per batch element and stack.
    lens, rest = xs[0], xs[1:]
    n_scan_in = int(ctx.attr("num_scan_inputs"))
    n_state = len(rest) - n_scan_in
    if lens is not None and rest[n_state:] and bool((lens != rest[n_state].shape[1]).any()):
        raise NotImplementedError("Scan-8 with ragged sequence_lens")
    dirs = ctx.attr("directions")
    per_batch = []
    for b in range(rest[0].shape[0]):
        sub = KernelContext(
            ctx.node, {**ctx.attrs, "scan_input_directions": dirs}, ctx.device, ctx.run_graph, 9
        )
        per_batch.append(_scan9(sub, [x[b] for x in rest]))
    return [torch.stack([r[k] for r in per_batch]) for k in range(len(per_batch[0]))]


def _scan9(ctx: KernelContext, xs: list[Tensor | None]) -> list[Tensor]:
    body = ctx.attr("body")
    n_scan_in = int(ctx.attr("num_scan_inputs"))
    n_state = len(xs) - n_scan_in
    states = list(xs[:n_state])
    scan_in = list(xs[n_state:])
    in_axes = ctx.attr("scan_input_axes") or [0] * n_scan_in
    in_dirs = ctx.attr("scan_input_directions") or [0] * n_scan_in
    n_scan_out = len(body.outputs) - n_state
    out_axes = ctx.attr("scan_output_axes") or [0] * n_scan_out
    out_dirs = ctx.attr("scan_output_directions") or [0] * n_scan_out
    seqs = []
    for x, ax, d in zip(scan_in, in_axes, in_dirs):
        ax = ax + x.dim() if ax < 0 else ax
        x = torch.movedim(x, ax, 0)
        seqs.append(x.flip(0) if d else x)
    steps = seqs[0].shape[0] if seqs else 0
    names = body.input_names
    collected: list[list[Tensor]] = [[] for _ in range(n_scan_out)]
    for t in range(steps):
        feeds = dict(zip(names[:n_state], states))
        feeds.update({n: s[t] for n, s in zip(names[n_state:], seqs)})
        outs = ctx.run_graph(body, feeds)
        states = outs[:n_state]
        for k, y in enumerate(outs[n_state:]):
            collected[k].append(y)
    results = list(states)
    for k, ys in enumerate(collected):
        y = torch.stack(ys) if ys else torch.zeros(0)
        if out_dirs[k]:
            y = y.flip(0)
        ax = out_axes[k]
        ax = ax + y.dim() if ax < 0 else ax
        results.append(torch.movedim(y, 0, ax))
    return results
