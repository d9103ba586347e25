"""Normalise attention after the value product: softmax(S) @ V = (e @ V) * (1 / rowsum(e)).

A SoftMax protocol ends with one multiply per score (e times the row's reciprocal). When its only consumer is the
MatMul with the values, the same reciprocal can scale the product instead: one multiply per output element
(n x d per head instead of n x n: 196 x 32 instead of 196 x 196 on the MNIST U-Net), and the row sum and its
reciprocal are unchanged. The protocol node then computes e alone (its ``normalize`` parameter is false) and the
graph gets ReduceSum -> Reciprocal -> Mul after the MatMul. The identity is exact in real arithmetic, so the
whole-model check's verdict on the softmax carries over; in fixed point the unnormalised e (at most e^U per entry,
U the calibrated shift) times V stays far from the ring's range.

Runs after the protocol choice, on the chosen graph; the softmax's report entry records the fusion, and the
nodes added here count in its estimated bytes and rounds (``charge_to``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

import runtime.protocols as protocols
from compiler.interpreter import attribute_dict
from passes.graph_view import charge_to

FUSABLE_FAMILIES = ("softmax_shift", "softmax_max")


def unnormalized(protocol: protocols.Protocol) -> protocols.Protocol:
    """The same softmax protocol stopping at e (no reciprocal, no multiply)."""
    return dataclasses.replace(protocol, name=f"{protocol.name}@e", params={**protocol.params, "normalize": False})


def _why_not(node, consumers: dict, outputs: set[str], shape_of) -> tuple[str | None, onnx.NodeProto | None]:
    users = consumers.get(node.output[0], [])
    if node.output[0] in outputs:
        return "the softmax is a graph output", None
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != node.output[0]:
        return "its output does not feed exactly one MatMul as the left operand", None
    shape = shape_of(node.input[0])
    axis = int(attribute_dict(node).get("axis", -1))
    if not shape or axis % len(shape) != len(shape) - 1:
        return "the softmax axis is not the last axis (the MatMul's contraction axis)", None
    return None, users[0]


def fuse_attention(model: onnx.ModelProto, rewrites: list[dict], shape_of) -> onnx.ModelProto:
    """Fuse every fusable softmax protocol node of ``model`` with its value MatMul; updates ``rewrites`` (the
    report entries, matched by node name) in place. ``shape_of(name)``: a tensor's static shape or None."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    entries = {r["node"]: r for r in rewrites}
    new_nodes, added = [], []
    fused_matmuls: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.domain != protocols.DOMAIN or node.op_type != protocols.OP_TYPES["softmax"]:
            continue
        protocol = protocols.from_onnx_attributes(attribute_dict(node), op_type=node.op_type)
        if protocol.family not in FUSABLE_FAMILIES:
            continue
        why, matmul = _why_not(node, consumers, outputs, shape_of)
        entry = entries.get(node.name)
        if why:
            if entry is not None:
                entry["fusion"] = f"not normalised after the value MatMul: {why}"
            continue
        e_protocol = unnormalized(protocol)
        added.append(e_protocol)
        e_name = f"{node.output[0]}/unnormalized"
        replacement = protocols.make_node(e_protocol, node.input, e_name, node.name,
                                          **{a.name: helper.get_attribute_value(a) for a in node.attribute
                                             if a.name == "axis"})
        new_nodes.append((node, replacement))
        out = matmul.output[0]
        product, total, inverse = f"{out}/unnormalized", f"{e_name}/row_sum", f"{e_name}/row_reciprocal"
        axes = f"{e_name}/axes"
        fused_matmuls[matmul.output[0]] = [
            helper.make_node("MatMul", [e_name, matmul.input[1]], [product], name=matmul.name),
            *charge_to(node.name, [
                helper.make_node("Constant", [], [axes], name=axes,
                                 value=numpy_helper.from_array(np.array([-1], np.int64))),
                helper.make_node("ReduceSum", [e_name, axes], [total], name=f"{node.name}/row_sum", keepdims=1),
                helper.make_node("Reciprocal", [total], [inverse], name=f"{node.name}/row_reciprocal"),
                helper.make_node("Mul", [product, inverse], [out], name=f"{matmul.name}/normalize")]),
        ]
        if entry is not None:
            entry["protocol"], entry["params"] = e_protocol.name, e_protocol.params
            products = int(np.prod(shape_of(out))) if shape_of(out) else "one per output element,"
            entry["fusion"] = (f"normalised after the value MatMul {matmul.name}: {products} multiplies instead of "
                               f"{int(np.prod(shape_of(node.input[0])))}")
    if not new_nodes:
        return model
    out_model = onnx.ModelProto()
    out_model.CopyFrom(model)
    replaced = {old.output[0]: new for old, new in new_nodes}   # protobuf may wrap a node anew on each access
    nodes = []
    for node in model.graph.node:
        if node.domain == protocols.DOMAIN and node.output[0] in replaced:
            nodes.append(replaced[node.output[0]])
        elif node.op_type == "MatMul" and node.output[0] in fused_matmuls:
            nodes.extend(fused_matmuls[node.output[0]])
        else:
            nodes.append(node)
    del out_model.graph.node[:]
    out_model.graph.node.extend(nodes)
    protocols.add_functions(out_model, added)
    return out_model

