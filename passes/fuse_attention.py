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
from onnx import helper

import runtime.protocols as protocols
from passes.graph_view import GraphView, charge_to, public_constant, with_replacements

FUSABLE_FAMILIES = ("softmax_shift", "softmax_max")


def unnormalized(protocol: protocols.Protocol) -> protocols.Protocol:
    """The same softmax protocol stopping at e (no reciprocal, no multiply)."""
    return dataclasses.replace(protocol, name=f"{protocol.name}@e", params={**protocol.params, "normalize": False})


def _why_not(view: GraphView, node) -> tuple[str | None, onnx.NodeProto | None]:
    if node.output[0] in view.graph_outputs:
        return "the softmax is a graph output", None
    user = view.only_consumer(node.output[0])
    if user is None or user.op_type != "MatMul" or user.input[0] != node.output[0]:
        return "its output does not feed exactly one MatMul as the left operand", None
    shape = view.shape(node.input[0])
    axis = int(view.attrs(node).get("axis", -1))
    if not shape or axis % len(shape) != len(shape) - 1:
        return "the softmax axis is not the last axis (the MatMul's contraction axis)", None
    return None, user


def fuse_attention(model: onnx.ModelProto, rewrites: list[dict]) -> onnx.ModelProto:
    """Fuse every fusable softmax protocol node of ``model`` with its value MatMul; updates ``rewrites`` (the
    report entries, matched by node name) in place."""
    view = GraphView(model)
    entries = {r["node"]: r for r in rewrites}
    by_output: dict[str, list[onnx.NodeProto]] = {}   # node output -> replacement node(s), where it stood
    added = []
    for node in model.graph.node:
        if node.domain != protocols.DOMAIN or node.op_type != protocols.OP_TYPES["softmax"]:
            continue
        protocol = protocols.from_onnx_attributes(view.attrs(node), op_type=node.op_type)
        if protocol.family not in FUSABLE_FAMILIES:
            continue
        why, matmul = _why_not(view, node)
        entry = entries.get(node.name)
        if why:
            if entry is not None:
                entry["fusion"] = f"not normalised after the value MatMul: {why}"
            continue
        e_protocol = unnormalized(protocol)
        added.append(e_protocol)
        e_name = f"{node.output[0]}/unnormalized"
        by_output[node.output[0]] = [protocols.make_node(
            e_protocol, node.input, e_name, node.name,
            **{a.name: helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"})]
        out = matmul.output[0]
        product, total, inverse = f"{out}/unnormalized", f"{e_name}/row_sum", f"{e_name}/row_reciprocal"
        axes = f"{e_name}/axes"
        # e comes scaled by e^lift from a lifted protocol (softmax.box, for precision): the row sum and the product
        # drop it again, so the reciprocal is taken of a sum of at most n and the result keeps its precision
        lift = float(protocol.params.get("lift", 0.0))
        row_sum, normal = (f"{e_name}/lifted_row_sum", f"{out}/lifted") if lift else (total, out)
        normalize = [helper.make_node("ReduceSum", [e_name, axes], [row_sum], name=f"{node.name}/row_sum",
                                      keepdims=1)]
        if lift:
            down = f"{e_name}/unlift"
            normalize += [public_constant(down, np.array(np.exp(-lift), np.float32)),
                          helper.make_node("Mul", [row_sum, down], [total], name=f"{node.name}/row_sum_unlift")]
        normalize += [helper.make_node("Reciprocal", [total], [inverse], name=f"{node.name}/row_reciprocal"),
                      helper.make_node("Mul", [product, inverse], [normal], name=f"{matmul.name}/normalize")]
        if lift:
            normalize.append(helper.make_node("Mul", [normal, down], [out], name=f"{matmul.name}/unlift"))
        by_output[out] = [
            helper.make_node("MatMul", [e_name, matmul.input[1]], [product], name=matmul.name),
            *charge_to(node.name, [public_constant(axes, np.array([-1], np.int64)), *normalize]),
        ]
        if entry is not None:
            entry["protocol"], entry["params"] = e_protocol.name, e_protocol.params
            products = int(np.prod(view.shape(out))) if view.shape(out) else "one per output element,"
            entry["fusion"] = (f"normalised after the value MatMul {matmul.name}: {products} multiplies instead of "
                               f"{int(np.prod(view.shape(node.input[0])))}")
    return with_replacements(model, by_output, added) if by_output else model

