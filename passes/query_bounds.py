"""Bound attention's score rows on the query side: the 2-norm of bounded rows without a product per score.

A bounded-rows softmax (``softmax.shiftb``, 2-norm) computes, per row of scores s_i = q_i K^T, the sum of squares
S_i of s_i - mean(s_i), and scales a row beyond B^2 by f_i = B / sqrt(S_i): a square and a multiply per score.
When the scores come straight from a MatMul, both are per-query quantities instead. With Kc = K^T minus its mean
over the keys (a [d, m] per head), s_i - mean(s_i) = q_i Kc, so S_i = q_i (Kc Kc^T) q_i^T: one [d, d] product
per head, then d products per query; and f_i (s_i) = (f_i q_i) K^T, d multiplies per query. The protocol node then
takes rows already bounded (``clip`` "prebound") and skips its own bound: the same function of the same scores in
real arithmetic (the whole-model check's verdict carries over), with n x d products in place of 2 n x m (m keys,
d the head's width: 196 x 8 against 2 x 196 x 196 on the MNIST U-Net). In fixed point S is summed from different
products; both stay far from the ring's range for any calibrated row.

Applies to 2-norm bounded-rows softmax protocol nodes over the last axis whose input is a MatMul product with no
other consumer; runs after the choice, the normalisation after V and the prescale (which may have scaled either
operand: both are read as they are). The report entry records it; the nodes added here count in its estimated
bytes and rounds (``charge_to``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

import runtime.protocols as protocols
from passes.graph_view import GraphView, charge_to, public_constant, with_replacements
from runtime.protocols.families import monic_form, zero_row_guard


def prebound(protocol: protocols.Protocol) -> protocols.Protocol:
    """The same softmax protocol taking rows already scaled into [-B, B]."""
    return dataclasses.replace(protocol, name=f"{protocol.name}@q", params={**protocol.params, "clip": "prebound"})


def movable(protocol: protocols.Protocol) -> bool:
    """Whether this softmax protocol bounds its rows by their 2-norm (what this pass can move onto the queries)."""
    return (protocol.family == "softmax_shift" and protocol.params.get("clip") == "bound"
            and int(protocol.params.get("norm", 2)) == 2)


def _why_not(view: GraphView, node: onnx.NodeProto, protocol):
    if protocol.family != "softmax_shift" or protocol.params.get("clip") != "bound":
        return "not a bounded-rows softmax", None
    if not movable(protocol):
        return "bounded by the 4-norm (no quadratic form in the query)", None
    return scores_product(view, node)


def scores_product(view: GraphView, node: onnx.NodeProto):
    """``(None, the MatMul)`` when the softmax node's rows are a MatMul product's, over its last axis, with no other
    consumer; else ``(why not, None)``. Also read by the pipeline before the choice, so that a 2-norm bounded
    softmax is ranked at the cost it will have here."""
    why, matmul = view.sole_matmul(node.input[0], node)
    if why:
        return why, None
    shapes = [view.shape(name) for name in matmul.input]
    axis = int(view.attrs(node).get("axis", -1))
    if any(s is None or len(s) < 2 for s in shapes) or len(shapes[0]) != len(shapes[1]):
        return "the MatMul's operands are not batched matrices of known shapes", None
    if axis % len(shapes[0]) != len(shapes[0]) - 1:
        return "the softmax axis is not the keys' axis", None
    return None, matmul


def bound_on_queries(model: onnx.ModelProto, rewrites: list[dict]) -> onnx.ModelProto:
    """Move every applicable bounded-rows softmax's bound onto its queries; updates ``rewrites`` (report entries,
    matched by node name) in place."""
    view = GraphView(model)
    entries = {r["node"]: r for r in rewrites}
    by_output: dict[str, list[onnx.NodeProto]] = {}
    added: list[protocols.Protocol] = []
    for node in model.graph.node:
        if node.domain != protocols.DOMAIN or node.op_type != protocols.OP_TYPES["softmax"]:
            continue
        protocol = protocols.from_onnx_attributes(view.attrs(node), op_type=node.op_type)
        why, matmul = _why_not(view, node, protocol)
        entry = entries.get(node.name)
        if why:
            if entry is not None and protocol.params.get("clip") == "bound":
                entry["query_bounds"] = f"bounded inside the protocol: {why}"
            continue
        q_protocol = prebound(protocol)
        rsqrt = protocols.direct("rsqrt")
        added += [q_protocol, rsqrt]
        params = protocol.params
        gamma = monic_form(params["exp"])[0] if params.get("prescaled") else 1.0
        bound = gamma * float(params["bound"])        # in the units of the scores as computed
        queries, keys = matmul.input
        p = f"{node.name}/query_bound"
        rank = len(view.shape(keys))
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        scaled_queries = f"{p}/scaled_queries"
        new_matmul = onnx.NodeProto()
        new_matmul.CopyFrom(matmul)
        new_matmul.input[0] = scaled_queries
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"}
        by_output[matmul.output[0]] = [*charge_to(node.name, [
            public_constant(f"{p}/axes", np.array([-1], np.int64)),
            public_constant(f"{p}/limit", np.array(bound * bound, np.float32)),
            public_constant(f"{p}/tiny", np.array(zero_row_guard(bound), np.float32)),
            public_constant(f"{p}/bound", np.array(bound, np.float32)),
            public_constant(f"{p}/one", np.array(1.0, np.float32)),
            helper.make_node("ReduceMean", [keys, f"{p}/axes"], [f"{p}/key_mean"], name=f"{p}/key_mean",
                             keepdims=1),
            helper.make_node("Sub", [keys, f"{p}/key_mean"], [f"{p}/centred_keys"], name=f"{p}/centre"),
            helper.make_node("Transpose", [f"{p}/centred_keys"], [f"{p}/centred_keys_t"], name=f"{p}/transpose",
                             perm=perm),
            helper.make_node("MatMul", [f"{p}/centred_keys", f"{p}/centred_keys_t"], [f"{p}/gram"],
                             name=f"{p}/gram"),
            helper.make_node("MatMul", [queries, f"{p}/gram"], [f"{p}/queries_gram"], name=f"{p}/queries_gram"),
            helper.make_node("Mul", [queries, f"{p}/queries_gram"], [f"{p}/terms"], name=f"{p}/terms"),
            helper.make_node("ReduceSum", [f"{p}/terms", f"{p}/axes"], [f"{p}/square_sum"], name=f"{p}/square_sum",
                             keepdims=1),
            helper.make_node("Greater", [f"{p}/square_sum", f"{p}/limit"], [f"{p}/beyond"], name=f"{p}/beyond"),
            helper.make_node("Add", [f"{p}/square_sum", f"{p}/tiny"], [f"{p}/square_sum_tiny"], name=f"{p}/tiny"),
            protocols.make_node(rsqrt, [f"{p}/square_sum_tiny"], f"{p}/rsqrt", f"{p}/rsqrt"),
            helper.make_node("Mul", [f"{p}/rsqrt", f"{p}/bound"], [f"{p}/shrink"], name=f"{p}/shrink"),
            helper.make_node("Where", [f"{p}/beyond", f"{p}/shrink", f"{p}/one"], [f"{p}/factor"],
                             name=f"{p}/factor"),
            helper.make_node("Mul", [queries, f"{p}/factor"], [scaled_queries], name=f"{p}/scale_queries")]),
            new_matmul,
        ]
        by_output[node.output[0]] = [protocols.make_node(q_protocol, node.input, node.output[0], node.name,
                                                         **attrs)]
        if entry is not None:
            rows, width = int(np.prod(view.shape(queries)[:-1])), int(view.shape(queries)[-1])
            entry["protocol"], entry["params"] = q_protocol.name, q_protocol.params
            entry["query_bounds"] = (f"rows bounded on the queries: S = q (Kc Kc^T) q^T and the factor on q, about "
                                     f"{3 * rows * width} products in place of "
                                     f"{2 * int(np.prod(view.shape(node.input[0])))} on the scores")
    return with_replacements(model, by_output, added) if by_output else model

