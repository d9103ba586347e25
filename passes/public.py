"""Public-value analysis: which tensors depend only on public inputs and constants.

Under MPC, SPU computes an op on public operands in the clear at no communication cost; the rewrite pass must
leave such nodes alone (an approximation would only lose accuracy). For a diffusion U-Net the timestep is public,
so the sinusoidal embedding (Mul by constant frequencies, Sin, Cos, Concat) is computed in the clear; it stops
being public where it meets the model owner's weights (the first Gemm of the time MLP).
"""

from __future__ import annotations

import onnx

from compiler.lowering import is_weight


def public_tensors(model: onnx.ModelProto, public_inputs: set[str]) -> set[str]:
    """Names of every tensor computable from public inputs and non-weight constants alone."""
    public = set(public_inputs)
    public.update(init.name for init in model.graph.initializer if not is_weight(init))
    public.add("")  # an omitted optional input reveals nothing
    for node in model.graph.node:  # graph nodes are topologically sorted (ONNX requires it)
        # Shapes are static and known to every party, whatever the tensor holds.
        if node.op_type in ("Shape", "Size") or all(name in public for name in node.input):
            public.update(node.output)
    public.discard("")
    return public


# Ops through which a constant only rescales or shifts a value; a weight-bearing op (Conv, Gemm, MatMul, a norm's
# scale) always makes its float initializers secret.
_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Pow", "Concat", "Unsqueeze", "Reshape", "Cast", "Expand", "Sin", "Cos",
                "Exp", "Neg", "Identity", "Squeeze", "Transpose", "Slice", "Gather"}


def public_initializers(model: onnx.ModelProto, public_inputs: set[str]) -> set[str]:
    """Float initializers that are architecture constants of the public computation, not the owner's weights.

    A float initializer counts as public when every one of its uses is an elementwise op whose other operands
    are all public (computed from public inputs and constants only), e.g. the timestep frequency table of a
    dynamo export: ``Mul(Cast(timestep), freqs)``. Anything that meets a secret value, or feeds a weight-bearing
    op, stays a secret weight. Found by iterating to a fixed point, since a public constant can make another
    value public.
    """
    candidates = {init.name for init in model.graph.initializer if is_weight(init)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    from_inputs = _depends_on(model, public_inputs)
    outputs = {o.name for o in model.graph.output}
    chosen: set[str] = set()
    while True:
        public = public_tensors(model, set(public_inputs) | chosen)

        def combines_only_with_public_inputs(name: str, node: onnx.NodeProto) -> bool:
            others = [other for other in node.input if other and other != name]
            return (node.op_type in _ELEMENTWISE and node.domain in ("", "ai.onnx") and
                    all(other in public for other in others) and any(other in from_inputs for other in others))

        grown = {name for name in candidates - chosen
                 if name not in outputs and consumers.get(name)
                 and all(combines_only_with_public_inputs(name, node) for node in consumers[name])}
        if not grown:
            return chosen
        chosen |= grown


def _depends_on(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    reached = set(sources)
    for node in model.graph.node:
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached
