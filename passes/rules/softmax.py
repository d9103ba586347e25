"""SoftMax: the op on any axis, and the spelled-out exp(x - max) / sum(exp(x - max))."""

from __future__ import annotations

import onnx

from passes.graph_view import GraphView
from passes.match import Decline, Match


def _reduce_axes(view: GraphView, node: onnx.NodeProto) -> list[int] | None:
    attrs = view.attrs(node)
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(node.input) > 1 and node.input[1]:
        value = view.constant(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return None


def _normalize_axis(axis: int, rank: int | None) -> int:
    return axis + rank if axis < 0 and rank is not None else axis


class SoftmaxRule:
    anchors = {"Softmax", "Div"}

    def match(self, view: GraphView, node: onnx.NodeProto) -> Match | Decline | None:
        if node.op_type == "Softmax":
            return Match("softmax", node, [node], [node.input[0]], {"axis": int(view.attrs(node).get("axis", -1))})
        if node.op_type == "Div":
            return self._spelled_out(view, node)
        return None

    def _spelled_out(self, view: GraphView, div: onnx.NodeProto) -> Match | Decline | None:
        exp = view.producer.get(div.input[0])
        total = view.producer.get(div.input[1])
        if exp is None or total is None or exp.op_type != "Exp" or total.op_type != "ReduceSum":
            return None
        if total.input[0] != exp.output[0]:
            return None
        sub = view.producer.get(exp.input[0])
        nodes = [div, total, exp]
        x = exp.input[0]
        if sub is not None and sub.op_type == "Sub":
            shift = view.producer.get(sub.input[1])
            if shift is not None and shift.op_type == "ReduceMax" and shift.input[0] == sub.input[0]:
                nodes += [sub, shift]
                x = sub.input[0]
        rank = len(view.shape(x)) if view.shape(x) else None
        axes = _reduce_axes(view, total)
        if axes is None or len(axes) != 1 or not view.attrs(total).get("keepdims", 1):
            return Decline("softmax", [view.node_name(n) for n in nodes],
                           "the ReduceSum does not reduce exactly one axis with keepdims, so this is not a softmax")
        if len(nodes) == 5 and _reduce_axes(view, nodes[4]) not in ([axes[0]], [axes[0] - (rank or 0)],
                                                                     [_normalize_axis(axes[0], rank)]):
            return Decline("softmax", [view.node_name(n) for n in nodes],
                           "the max is taken over another axis than the sum")
        escaping = view.escaping_outputs(nodes, div)
        if escaping:
            return Decline("softmax", [view.node_name(n) for n in nodes],
                           f"intermediate value(s) {', '.join(escaping)} are also used elsewhere")
        # Without the max shift the expression is still a softmax (the protocol subtracts the max itself).
        nodes.sort(key=lambda n: view.order[id(n)])
        return Match("softmax", div, nodes, [x], {"axis": _normalize_axis(axes[0], rank)})
