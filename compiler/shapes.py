"""Static shapes of every tensor, from an abstract trace of the lowering.

ONNX shape inference gives up on some exports (a Slice whose bounds come from Shape arithmetic, GEGLU's Split in
the TorchScript exporter); cipherdm's own lowering folds that arithmetic, so ``jax.eval_shape`` over it knows
every shape without computing anything.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.interpreter import Interpreter
from compiler.lowering import lower


def traced_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    seen: dict[str, tuple[int, ...]] = {}

    class ShapeRecorder(Interpreter):
        def on_node_done(self, node, inputs, outputs):
            for name, value in zip(node.output, outputs):
                if name and value is not None:
                    seen[name] = tuple(int(d) for d in np.shape(value))

    lower(model, interpreter_cls=ShapeRecorder)
    return seen
