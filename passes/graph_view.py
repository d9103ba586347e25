"""A read-mostly view of an ONNX graph for the passes: producers, consumers, constants and node names."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.interpreter import attribute_dict


class GraphView:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.constants: dict[str, np.ndarray] = {}
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        for node in self.graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_node_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        self.order = {id(node): i for i, node in enumerate(self.graph.node)}
        self.shapes = _value_shapes(model)
        self._traced = False

    def node_name(self, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}:{node.output[0]}"

    def attrs(self, node: onnx.NodeProto) -> dict:
        return attribute_dict(node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor known without running the model (Constant node or initializer), else None.

        Initializers count: the passes only read constants for matching (0.5, sqrt 2, eps); whether a weight is
        secret is decided by the lowering, not here.
        """
        if name in self.constants:
            return self.constants[name]
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
            self.constants[name] = value
            return value
        producer = self.producer.get(name)
        if producer is not None and producer.op_type in ("Cast", "Identity", "CastLike") and producer.input:
            inner = self.constant(producer.input[0])
            if inner is not None:
                return inner.astype(np.float64) if producer.op_type != "Identity" else inner
        return None

    def public_scalar(self, name: str) -> np.ndarray | None:
        """The value of a one-element float Constant node (not an initializer: a float initializer is the model
        owner's secret weight, and baking it into a merged constant would reveal it; not a Cast of a constant,
        whose dtype would differ from the node it feeds), else None."""
        producer = self.producer.get(name)
        if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
            return None
        value = self.constants.get(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        return value

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(-1)[0])

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def sole_matmul(self, name: str, consumer: onnx.NodeProto) -> tuple[str | None, onnx.NodeProto | None]:
        """``(None, the MatMul)`` when ``name`` is a MatMul product used by ``consumer`` alone (attention's scores
        feeding a softmax), else ``(why not, None)``."""
        matmul = self.producer.get(name)
        if matmul is None or matmul.op_type != "MatMul":
            return "its input is not a MatMul product", None
        user = self.only_consumer(matmul.output[0])
        # (by outputs, not identity: ``consumer`` may be a copy, like the canonical nodes the choice walks)
        if user is None or list(user.output) != list(consumer.output):
            return "the MatMul product has other consumers", None
        return None, matmul

    def escaping_outputs(self, nodes: list[onnx.NodeProto], root: onnx.NodeProto) -> list[str]:
        """Outputs of ``nodes`` (other than the root's) used outside the set: they block removing the set."""
        inside = {id(n) for n in nodes}
        escaping = []
        for node in nodes:
            if node is root:
                continue
            for out in node.output:
                if out in self.graph_outputs or any(id(u) not in inside for u in self.consumers.get(out, [])):
                    escaping.append(out)
        return escaping

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name not in self.shapes and not self._traced and name:
            # ONNX shape inference left a gap: fill every shape from a trace of the lowering, once.
            self._traced = True
            try:
                from compiler.shapes import traced_shapes
                self.shapes = {**traced_shapes(self.model), **self.shapes}
            except Exception:  # a graph the lowering refuses keeps the shapes ONNX inferred
                pass
        return self.shapes.get(name)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    attrs = attribute_dict(node)
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.asarray(attrs["value_float"], np.float32)
    if "value_floats" in attrs:
        return np.asarray(attrs["value_floats"], np.float32)
    if "value_int" in attrs:
        return np.asarray(attrs["value_int"], np.int64)
    if "value_ints" in attrs:
        return np.asarray(attrs["value_ints"], np.int64)
    return None


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def public_constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node (not an initializer: float initializers are the model owner's secret weights)."""
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value, name))


def with_replacements(model: onnx.ModelProto, by_output: dict[str, list[onnx.NodeProto]], added) -> onnx.ModelProto:
    """A copy of ``model`` with each node whose first output is a key of ``by_output`` replaced, in place, by that
    list of nodes, and the function bodies of the protocols ``added`` attached."""
    import runtime.protocols as protocols
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in model.graph.node:
        nodes.extend(by_output.get(node.output[0], [node]) if node.output else [node])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    protocols.add_functions(out, added)
    return out


# Metadata key on the nodes a pass adds for a rewritten node (the rewritten node's name as value): their estimated
# cost is that node's, in its report entry (passes/report.py: charge_estimates).
COST_OF = "cipherdm.cost_of"


def charge_to(owner: str, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Mark ``nodes`` (new ones only, not copies of the graph's own) as part of the rewritten node ``owner``."""
    for node in nodes:
        node.metadata_props.add(key=COST_OF, value=owner)
    return nodes
