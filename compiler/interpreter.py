"""A tiny interpreter that walks an ONNX graph and calls each node's lowering (like torch.fx's Interpreter).

Values flowing through the graph are of two kinds:

* static values: numpy arrays known at compile time (integer initializers, Constant nodes, shapes, and anything
  computed only from those). Lowerings that need a compile-time value (Reshape's shape, Slice's bounds, ...) ask
  for it with ``ctx.static(i)``.
* traced values: jax arrays or tracers that depend on the model inputs or on the weights.

A node whose inputs are all static is evaluated eagerly (``jax.ensure_compile_time_eval``) and its outputs stay
static, which is how the legacy exporter's Shape/Gather/Concat chains fold away.

Subclass and override :meth:`Interpreter.run_node` or :meth:`Interpreter.on_node_done` to observe or change
evaluation (calibration uses this to record every node's input range).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.experimental
import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import LoweringError
from compiler.registry import lookup


def attribute_dict(node: onnx.NodeProto) -> dict[str, Any]:
    """Node attributes as Python values (strings decoded, tensors as numpy arrays)."""
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        attrs[attr.name] = value
    return attrs


def is_static(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic))


class NodeContext:
    """What a lowering sees of its node: attributes, inputs (static or traced) and the opset."""

    def __init__(self, node: onnx.NodeProto, inputs: list, opset: int):
        self.node = node
        self.inputs = inputs
        self.opset = opset
        self.attrs = attribute_dict(node)

    @property
    def name(self) -> str:
        return self.node.name or f"<{self.node.op_type} -> {', '.join(self.node.output)}>"

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] is not None

    def input(self, index: int, default=None):
        return self.inputs[index] if self.has_input(index) else default

    def is_static(self, index: int) -> bool:
        return self.has_input(index) and is_static(self.inputs[index])

    def static(self, index: int, default=None) -> np.ndarray | None:
        """Input ``index`` as a numpy array known at compile time; raises if it is computed at run time."""
        if not self.has_input(index):
            return default
        value = self.inputs[index]
        if not is_static(value):
            raise LoweringError(
                f"node {self.name} ({self.node.op_type})",
                [f"input {index} ('{self.node.input[index]}') must be known at compile time but depends on "
                 "model inputs or weights"],
            )
        return np.asarray(value)

    def static_ints(self, index: int, default=None) -> list[int] | None:
        value = self.static(index)
        return default if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


class Interpreter:
    """Evaluates a graph node by node with the registered lowerings."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.opset = default_opset(model)
        self.domain_opsets = {imp.domain: imp.version for imp in model.opset_import}

    def run(self, feeds: dict[str, Any]) -> list:
        """Run the graph; ``feeds`` maps graph inputs and initializers (as values) by name. Returns the outputs."""
        env: dict[str, Any] = {"": None}
        env.update(feeds)
        self.run_nodes(self.graph.node, env)
        missing = [o.name for o in self.graph.output if o.name not in env]
        if missing:
            raise LoweringError("graph outputs are never computed", missing)
        return [env[o.name] for o in self.graph.output]

    def run_nodes(self, nodes: Iterable[onnx.NodeProto], env: dict[str, Any]) -> None:
        for node in nodes:
            inputs = [env[name] if name else None for name in node.input]
            outputs = self.run_node(node, inputs)
            for name, value in zip(node.output, outputs):
                if name:
                    env[name] = value
            self.on_node_done(node, inputs, outputs)

    def run_node(self, node: onnx.NodeProto, inputs: list) -> list:
        opset = self.domain_opsets.get(node.domain or "", self.opset)
        lowering = lookup(node.domain, node.op_type, opset)
        if lowering is None:
            raise LoweringError(f"no lowering for {node.domain or 'ai.onnx'}::{node.op_type} at opset {opset}")
        ctx = NodeContext(node, inputs, opset)
        all_static = all(v is None or is_static(v) for v in inputs)
        if all_static:
            # 64-bit so folded shape arithmetic keeps int64 values such as Slice's INT64_MAX ends.
            with jax.ensure_compile_time_eval(), jax.experimental.enable_x64():
                result = lowering.fn(ctx)
            result = _as_tuple(result)
            return [None if r is None else np.asarray(r) for r in result]
        return list(_as_tuple(lowering.fn(ctx)))

    def on_node_done(self, node: onnx.NodeProto, inputs: list, outputs: list) -> None:
        """Hook for subclasses; called after every node."""


def _as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise LoweringError("the model imports no default-domain (ai.onnx) opset")
