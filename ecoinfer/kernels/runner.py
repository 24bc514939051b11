"""Reference runner: executes an IR graph node by node with the torch kernels."""

from __future__ import annotations

import time

import torch

from ecoinfer.errors import EcoinferError, ExecutionError, UnsupportedOpError
from ecoinfer.ir.graph import Graph, all_inputs, last_uses
from ecoinfer.ir.ops import get_schema
from ecoinfer.kernels.torch_ops.registry import KernelContext, get_kernel

Tensor = torch.Tensor


class ReferenceRunner:
    """Runs a graph on CPU or CUDA. Inputs must already be validated torch tensors."""

    def __init__(self, graph: Graph, device: str | torch.device = "cpu"):
        self.graph = graph
        self.device = torch.device(device)
        self._weights = {k: v.to(self.device) for k, v in graph.initializers.items()}
        self._plan = [self._bind(graph, n) for n in graph.nodes]

    @classmethod
    def for_subgraphs(cls, graph: Graph, device: str | torch.device) -> ReferenceRunner:
        """A runner only for the bodies of `graph`'s control-flow nodes, which read the
        caller's environment: no plan and no weights of its own (nothing is moved)."""
        r = cls.__new__(cls)
        r.graph, r.device, r._weights, r._plan = graph, torch.device(device), {}, []
        return r

    def subgraph_context(self, node, attrs: dict, env: dict[str, Tensor]) -> KernelContext:  # noqa: ANN001
        """The kernel context of a control-flow node of self.graph running in `env`."""
        return KernelContext(
            node, attrs, self.device, self._run_subgraph(self.graph, env), self.graph.opset
        )

    @staticmethod
    def _bind(graph: Graph, node):  # noqa: ANN001
        schema = get_schema(node.op_type, node.domain, where=node.label())
        fn = get_kernel(node.op_type, node.domain)
        if fn is None:
            raise UnsupportedOpError(
                f"{node.label()}: op '{node.op_type}' has a schema but no torch kernel yet"
            )
        attrs = {**schema.attrs, **node.attrs}
        return node, fn, attrs

    def run(
        self, feeds: dict[str, Tensor], profile: dict[str, list[float]] | None = None
    ) -> dict[str, Tensor]:
        """Run the graph. With `profile`, every top-level node is synchronised and its wall
        time appended to profile[node name] (slower: for per-layer tables only)."""
        env = dict(self._weights)
        env.update({k: v.to(self.device) for k, v in feeds.items()})
        outs = self._execute(self.graph, self._plan, env, profile)
        return dict(zip(self.graph.output_names, outs))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_subgraph(self, graph: Graph, env: dict[str, Tensor]):
        def run(sub: Graph, feeds: dict[str, Tensor]) -> list[Tensor]:
            scope = dict(env)
            scope.update({k: v.to(self.device) for k, v in sub.initializers.items()})
            scope.update(feeds)
            plan = [self._bind(sub, n) for n in sub.nodes]
            return self._execute(sub, plan, scope)

        return run

    def _execute(self, graph: Graph, plan, env: dict[str, Tensor], profile=None) -> list[Tensor]:  # noqa: ANN001
        last_use = last_uses(node for node, _, _ in plan)
        keep = set(graph.output_names)
        for k, (node, fn, attrs) in enumerate(plan):
            try:
                xs = [env[i] if i else None for i in node.inputs]
            except KeyError as e:
                raise ExecutionError(f"{node.label()}: input {e} was never computed") from None
            ctx = KernelContext(
                node, attrs, self.device, self._run_subgraph(graph, env), graph.opset
            )
            if profile is not None:
                self._sync()
                t0 = time.perf_counter()
            try:
                ys = fn(ctx, xs)
            except EcoinferError:
                raise
            except Exception as e:  # a kernel bug or an input the op cannot take
                raise ExecutionError(
                    f"{node.label()} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                ) from e
            if profile is not None:
                self._sync()
                profile.setdefault(node.name or f"{node.op_type}_{k}", []).append(
                    time.perf_counter() - t0
                )
            for name, y in zip(node.outputs, ys):
                if name:
                    env[name] = y
            # free activations nobody reads any more (memory stays flat on big models)
            for i in all_inputs(node):
                if i and last_use.get(i) == k and i not in keep and i not in self._weights:
                    env.pop(i, None)
        try:
            return [env[o] for o in graph.output_names]
        except KeyError as e:
            raise ExecutionError(f"graph '{graph.name}': output {e} was never computed") from None
