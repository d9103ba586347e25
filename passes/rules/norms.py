"""GroupNorm and LayerNorm in the forms the exporters emit.

GroupNorm: the GroupNormalization op (opset 18 scale/bias per group, 21+ per channel), and the exporters'
Reshape(N, G, -1) -> InstanceNormalization(scale=1, bias=0) -> Reshape -> Mul(gamma) -> Add(beta).
LayerNorm: the LayerNormalization op.

The canonical nodes take scale and bias per channel (GroupNorm, shape [C]) or over the normalized axes
(LayerNorm); the Match records extra Reshape inputs as attributes so the rewrite can build them.
"""

from __future__ import annotations

import numpy as np
import onnx

from passes.graph_view import GraphView
from passes.match import Decline, Match


def _is_constant_value(view: GraphView, name: str, value: float) -> bool:
    const = view.constant(name)
    return const is not None and np.allclose(const, value)


class GroupNormRule:
    anchors = {"GroupNormalization", "Add", "Mul", "Reshape"}

    def match(self, view: GraphView, node: onnx.NodeProto) -> Match | Decline | None:
        if node.op_type == "GroupNormalization":
            attrs = view.attrs(node)
            opset = next(o.version for o in view.model.opset_import if o.domain in ("", "ai.onnx"))
            groups = int(attrs["num_groups"])
            return Match("group_norm", node, [node], list(node.input[:3]),
                         {"num_groups": groups, "epsilon": float(attrs.get("epsilon", 1e-5)),
                          "scale_per_group": opset < 21})
        if node.op_type in ("Add", "Mul", "Reshape"):
            return self._instance_norm_form(view, node)
        return None

    def _instance_norm_form(self, view: GraphView, root: onnx.NodeProto) -> Match | Decline | None:
        # Walk back from the root: [Add(beta)] <- [Mul(gamma)] <- Reshape <- InstanceNormalization <- Reshape.
        chain = [root]
        node = root
        beta = gamma = None
        if node.op_type == "Add":
            beta = _other_input(view, node)
            node = _producer_of_nonconst(view, node)
            if node is None:
                return None
            chain.append(node)
        if node.op_type == "Mul":
            gamma = _other_input(view, node)
            node = _producer_of_nonconst(view, node)
            if node is None:
                return None
            chain.append(node)
        if node.op_type != "Reshape":
            return None
        inorm = view.producer.get(node.input[0])
        if inorm is None or inorm.op_type != "InstanceNormalization":
            return None
        first = view.producer.get(inorm.input[0])
        if first is None or first.op_type != "Reshape":
            return None
        chain += [inorm, first]
        names = [view.node_name(n) for n in chain]
        if root.op_type == "Reshape" and len(chain) == 3:
            pass  # affine-free GroupNorm
        elif root.op_type == "Mul" or (root.op_type == "Add" and gamma is None):
            return None  # the full form (with Add) is matched from its Add
        x = first.input[0]
        x_shape, grouped = view.shape(x), view.shape(first.output[0])
        if not x_shape or not grouped or len(grouped) != 3 or len(x_shape) < 3:
            return Decline("group_norm", names, "shapes around the InstanceNormalization are not static")
        if view.shape(node.output[0]) != x_shape:
            return Decline("group_norm", names, "the second Reshape does not restore the input shape")
        if not (_is_constant_value(view, inorm.input[1], 1.0) and _is_constant_value(view, inorm.input[2], 0.0)):
            return Decline("group_norm", names, "InstanceNormalization has a non-trivial scale or bias")
        channels = x_shape[1]
        for label, tensor in (("gamma", gamma), ("beta", beta)):
            shape = view.shape(tensor) if tensor else None
            if tensor and (shape is None or int(np.prod(shape)) != channels or
                           (len(shape) > 1 and shape[0] != channels and len(shape) >= len(x_shape))):
                return Decline("group_norm", names, f"{label} is not one value per channel (shape {shape})")
        escaping = view.escaping_outputs(chain, root)
        if escaping:
            return Decline("group_norm", names, f"intermediate value(s) {', '.join(escaping)} are also used elsewhere")
        chain.sort(key=lambda n: view.order[id(n)])
        epsilon = float(view.attrs(inorm).get("epsilon", 1e-5))
        return Match("group_norm", root, chain, [x, gamma or "", beta or ""],
                     {"num_groups": grouped[1], "epsilon": epsilon, "scale_per_group": False})


class LayerNormRule:
    anchors = {"LayerNormalization"}

    def match(self, view: GraphView, node: onnx.NodeProto) -> Match | Decline | None:
        if node.op_type != "LayerNormalization":
            return None
        attrs = view.attrs(node)
        if len(node.output) > 1 and any(node.output[1:]):
            return Decline("layer_norm", [view.node_name(node)], "the mean/inv-std outputs are used")
        rank = len(view.shape(node.input[0]) or ())
        axis = int(attrs.get("axis", -1))
        return Match("layer_norm", node, [node], [node.input[0], node.input[1],
                                                  node.input[2] if len(node.input) > 2 else ""],
                     {"axis": axis + rank if axis < 0 else axis, "epsilon": float(attrs.get("epsilon", 1e-5))})


def _other_input(view: GraphView, node: onnx.NodeProto) -> str | None:
    consts = [n for n in node.input if view.producer.get(n) is None or view.constant(n) is not None]
    return consts[0] if len(consts) == 1 else None


def _producer_of_nonconst(view: GraphView, node: onnx.NodeProto) -> onnx.NodeProto | None:
    candidates = [view.producer.get(n) for n in node.input if view.constant(n) is None and view.producer.get(n)]
    return candidates[0] if len(candidates) == 1 else None
