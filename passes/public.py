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
