"""Recognise pointwise activations by what they compute, not by how the exporter spelled them.

Exporters spell SiLU as Mul(x, Sigmoid(x)) or x / (1 + exp(-x)), GELU as an Erf chain with 0.5 and sqrt(2) in
any operand order and constant form, Mish as a Mish op or x * tanh(softplus(x)) with torch's threshold Where.
Rather than one structural pattern per spelling, a rule takes the "cone" of pointwise nodes between a single
non-constant tensor x and a root node (every other input a scalar constant), evaluates the cone on probe
points with onnxruntime, and compares it with each known function. Any spelling that computes the function
matches; anything else (a scaled SiLU, a quick_gelu) does not.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from passes.graph_view import GraphView
from passes.match import Decline, Match

POINTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Neg", "Exp", "Log", "Sigmoid", "Tanh", "Erf", "Pow", "Sqrt", "Reciprocal",
    "Softplus", "Mish", "Gelu", "Cast", "Where", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Relu",
    "Abs", "Identity", "Max", "Min", "Clip", "HardSigmoid", "Not",
}
MAX_CONE_NODES = 14
PROBE = np.concatenate([np.linspace(-12.0, 12.0, 481), [-40.0, -25.0, 25.0, 40.0]]).astype(np.float32)


def _erf(x):
    return np.vectorize(math.erf)(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


# Float64 references. Order matters only for ties, which the probes rule out (gelu and gelu_tanh differ ~1e-3).
FUNCTIONS = {
    "silu": (lambda x: x / (1.0 + np.exp(-x)), {}),
    "mish": (lambda x: x * np.tanh(_softplus(x)), {}),
    "gelu": (lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), {"approximate": "none"}),
    "gelu_tanh": (lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
                  {"approximate": "tanh"}),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), {}),
    "tanh": (np.tanh, {}),
    "exp": (np.exp, {}),
    "reciprocal": (lambda x: 1.0 / x, {}),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), {}),
}
# A cone must contain one of these ops to be worth calling the function (a lone Mul never is).
_SIGNATURE_OPS = {
    "silu": {"Sigmoid", "Exp"}, "mish": {"Mish", "Tanh", "Softplus"}, "gelu": {"Gelu", "Erf"},
    "gelu_tanh": {"Gelu", "Tanh"}, "sigmoid": {"Sigmoid", "Exp"}, "tanh": {"Tanh"}, "exp": {"Exp"},
    "reciprocal": {"Reciprocal", "Div"}, "rsqrt": {"Sqrt", "Pow"},
}


def _cone(view: GraphView, root: onnx.NodeProto, x: str) -> list[onnx.NodeProto] | None:
    """Nodes between x and root if every input on the way is x, produced inside, or a scalar constant."""
    nodes, stack, seen = [], [root], set()
    uses_x = False
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in POINTWISE_OPS or node.domain not in ("", "ai.onnx"):
            return None
        nodes.append(node)
        if len(nodes) > MAX_CONE_NODES:
            return None
        for name in node.input:
            if not name:
                continue
            if name == x:
                uses_x = True
                continue
            const = view.constant(name)
            if const is not None:
                if const.size != 1:
                    return None
                continue
            producer = view.producer.get(name)
            if producer is None:
                return None
            stack.append(producer)
    return sorted(nodes, key=lambda n: view.order[id(n)]) if uses_x else None


def _candidate_inputs(view: GraphView, root: onnx.NodeProto) -> list[str]:
    """Non-constant tensors feeding the pointwise region behind root, farthest (largest cone) first."""
    found, frontier, depth_of = [], [root], {}
    visited = set()
    depth = 0
    while frontier and len(visited) <= MAX_CONE_NODES:
        next_frontier = []
        for node in frontier:
            if id(node) in visited or node.op_type not in POINTWISE_OPS:
                continue
            visited.add(id(node))
            for name in node.input:
                if name and view.constant(name) is None:
                    depth_of[name] = depth
                    if name not in found:
                        found.append(name)
                    producer = view.producer.get(name)
                    if producer is not None:
                        next_frontier.append(producer)
        frontier = next_frontier
        depth += 1
    return sorted(found, key=lambda n: -depth_of[n])


def evaluate_cone(view: GraphView, nodes: list[onnx.NodeProto], x: str, output: str, probe: np.ndarray) -> np.ndarray:
    initializers, seen = [], set()
    for node in nodes:
        for name in node.input:
            if name and name != x and name not in seen and view.producer.get(name) not in nodes:
                seen.add(name)
                initializers.append(numpy_helper.from_array(np.asarray(view.constant(name)), name))
    # Constants produced by Constant/Cast nodes outside the cone are fed as initializers above.
    graph = helper.make_graph(
        list(nodes), "cone", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [len(probe)])],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)], initializers)
    opset = next((o.version for o in view.model.opset_import if o.domain in ("", "ai.onnx")), 18)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(view.model.ir_version or 8, 10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {x: probe})[0].astype(np.float64)


def identify(values: np.ndarray, probe: np.ndarray, ops: set[str]) -> str | None:
    x = probe.astype(np.float64)
    with np.errstate(all="ignore"):
        for name, (fn, _) in FUNCTIONS.items():
            if not ops & _SIGNATURE_OPS[name]:
                continue
            ref = fn(x)
            finite = np.isfinite(ref)
            if finite.mean() < 0.4 or not np.array_equal(finite, np.isfinite(values)):
                continue
            if np.all(np.abs(values[finite] - ref[finite]) <= 2e-5 * (1.0 + np.abs(ref[finite]))):
                return name
    return None


class PointwiseRule:
    """Matches silu, mish, gelu (erf and tanh), sigmoid, tanh, exp, reciprocal and rsqrt by value."""

    anchors = POINTWISE_OPS

    def match(self, view: GraphView, root: onnx.NodeProto) -> Match | Decline | None:
        if root.op_type not in POINTWISE_OPS or len(root.output) != 1:
            return None
        for x in _candidate_inputs(view, root):
            nodes = _cone(view, root, x)
            if not nodes:
                continue
            ops = {n.op_type for n in nodes}
            if not ops & set().union(*_SIGNATURE_OPS.values()):
                continue
            try:
                values = evaluate_cone(view, nodes, x, root.output[0], PROBE)
            except Exception:  # a cone onnxruntime refuses (odd dtypes) is simply not a match
                continue
            name = identify(values, PROBE, ops)
            if name is None:
                continue
            pattern = "gelu" if name == "gelu_tanh" else name
            escaping = view.escaping_outputs(nodes, root)
            if escaping:
                return Decline(pattern, [view.node_name(n) for n in nodes],
                               f"intermediate value(s) {', '.join(escaping)} are also used outside the {pattern}, "
                               "so the subgraph cannot be replaced as a whole")
            return Match(pattern, root, nodes, [x], dict(FUNCTIONS[name][1]))
        return None
