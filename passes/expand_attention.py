"""Expand opset 23's Attention op into MatMul -> scale -> Softmax -> MatMul, so its SoftMax gets a protocol.

The dynamo exporter at opset 23 emits one Attention node per attention layer; SPU would run its softmax with the
costly default exp and division. Expanded, the Softmax is an ordinary node that canonicalization picks up, and
the report names the Attention node it came from. Only the forms diffusion models use are expanded (no mask, no
key/value cache, no softcap, equal query and key/value heads); any other Attention is left whole, with a reason.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from passes.graph_view import GraphView
from passes.match import Decline

EXPANDED_FROM = "cipherdm.expanded_from"


def _why_not(view: GraphView, node: onnx.NodeProto) -> str | None:
    attrs = view.attrs(node)
    if any(name for name in node.input[3:]):
        return "has a mask or a key/value cache input"
    if any(name for name in node.output[1:]):
        return "its present_key/present_value/qk outputs are used"
    if attrs.get("is_causal", 0):
        return "is causal"
    if attrs.get("softcap", 0.0):
        return "uses softcap"
    q_shape, k_shape = view.shape(node.input[0]), view.shape(node.input[1])
    if not q_shape or not k_shape:
        return "input shapes are not static"
    if len(q_shape) == 3 and attrs.get("q_num_heads") != attrs.get("kv_num_heads"):
        return "grouped-query heads (q_num_heads != kv_num_heads)"
    if len(q_shape) == 4 and q_shape[1] != k_shape[1]:
        return "grouped-query heads"
    return None


def expand_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Decline]]:
    view = GraphView(model)
    declined, new_nodes, inits = [], [], []
    changed = False
    for node in model.graph.node:
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        reason = _why_not(view, node)
        if reason:
            declined.append(Decline("attention", [view.node_name(node)], f"Attention {reason}: left whole, its "
                                    "softmax runs with SPU's default exp and division"))
            new_nodes.append(node)
            continue
        new_nodes += _expanded(view, node, inits)
        changed = True
    if not changed:
        return model, declined
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(inits)
    return onnx.shape_inference.infer_shapes(out, data_prop=True), declined


def _expanded(view: GraphView, node: onnx.NodeProto, inits: list) -> list[onnx.NodeProto]:
    attrs = view.attrs(node)
    name = view.node_name(node)
    q, k, v = node.input[:3]
    q_shape = view.shape(q)
    heads = attrs.get("q_num_heads")
    nodes = []

    def fresh(suffix):
        return f"{name}/{suffix}"

    def const(suffix, value):
        inits.append(numpy_helper.from_array(np.asarray(value), fresh(suffix)))
        return fresh(suffix)

    def add(op, inputs, suffix, **kw):
        nodes.append(helper.make_node(op, inputs, [fresh(suffix)], name=fresh(suffix), **kw))
        return fresh(suffix)

    if len(q_shape) == 3:
        def split(tensor, label):
            b, s, hidden = view.shape(tensor)
            r = add("Reshape", [tensor, const(f"{label}_shape", np.array([b, s, heads, hidden // heads], np.int64))],
                    f"{label}_heads")
            return add("Transpose", [r], f"{label}_bhsd", perm=[0, 2, 1, 3])
        q, k, v = split(q, "q"), split(k, "k"), split(v, "v")
        head_dim = q_shape[2] // heads
    else:
        head_dim = q_shape[3]
    scale = attrs.get("scale")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    kt = add("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    scores = add("MatMul", [q, kt], "scores")
    scaled = add("Mul", [scores, const("scale", np.array(scale, np.float32))], "scaled")
    probs = add("Softmax", [scaled], "softmax", axis=-1)
    nodes[-1].metadata_props.add(key=EXPANDED_FROM, value=name)
    if len(q_shape) == 3:
        out = add("MatMul", [probs, v], "context")
        t = add("Transpose", [out], "context_bshd", perm=[0, 2, 1, 3])
        b, s, _ = q_shape
        nodes.append(helper.make_node("Reshape", [t, const("out_shape", np.array([b, s, -1], np.int64))],
                                      [node.output[0]], name=fresh("merge_heads")))
    else:
        nodes.append(helper.make_node("MatMul", [probs, v], [node.output[0]], name=fresh("context")))
    return nodes
