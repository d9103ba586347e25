"""Scale before the product: (A @ B) * c = (A * c) @ B for a scalar constant c, on the smaller operand.

Attention scales its scores by 1/sqrt(d) after Q @ K^T. Under MPC a secret times a public constant is one
truncation per element: per score that is n x n per head (8 x 196 x 196 on the MNIST U-Net, 8.2 MiB per
attention), on Q it is n x d (25x fewer). The identity is exact in real arithmetic. It applies when the MatMul's
only consumer is the Mul (or the Div, as its dividend) by a one-element constant, and the chosen operand's rank
is at least the constant's (so broadcasting cannot change the product's shape).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from passes.graph_view import GraphView

SCALES = ("Mul", "Div")


def _scale_of(view: GraphView, node: onnx.NodeProto) -> tuple[str, str] | None:
    """(the MatMul output, the constant's name) when ``node`` scales a MatMul product by a scalar constant."""
    if node.op_type not in SCALES or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    sides = [(0, 1), (1, 0)] if node.op_type == "Mul" else [(0, 1)]
    for product, const in sides:
        producer = view.producer.get(node.input[product])
        value = view.constant(node.input[const])
        if producer is not None and producer.op_type == "MatMul" and value is not None and value.size == 1 \
                and np.issubdtype(value.dtype, np.floating):
            return node.input[product], node.input[const]
    return None


def hoist_scales(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """Move every scalar scale of a MatMul product onto its smaller operand; returns the model and one report
    entry per move."""
    view = GraphView(model)
    # id(scale node) -> (scale node, matmul, index of the operand to scale, constant, operand shape, product shape)
    moves: dict[int, tuple] = {}
    for node in model.graph.node:
        found = _scale_of(view, node)
        if found is None:
            continue
        product, const = found
        matmul = view.producer[product]
        if view.only_consumer(product) is not node:
            continue
        shapes = [view.shape(name) for name in matmul.input]
        out_shape = view.shape(product)
        if any(s is None for s in shapes) or out_shape is None:
            continue
        index = int(np.argmin([int(np.prod(s)) for s in shapes]))
        if int(np.prod(shapes[index])) >= int(np.prod(out_shape)):
            continue
        if np.ndim(view.constant(const)) > len(shapes[index]):
            continue
        moves[id(node)] = (node, matmul, index, const, shapes[index], out_shape)
    if not moves:
        return model, []

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    moved_matmuls = {id(m[1]) for m in moves.values()}
    entries = []
    for node in model.graph.node:
        if id(node) in moved_matmuls:
            continue         # emitted where its scale was: the constant may be defined after the MatMul
        move = moves.get(id(node))
        if move is None:
            out.graph.node.append(node)
            continue
        scale, matmul, index, const, operand_shape, out_shape = move
        scaled = f"{matmul.input[index]}/scaled_for/{scale.output[0]}"
        inputs = [matmul.input[index], const]
        out.graph.node.append(helper.make_node(scale.op_type, inputs, [scaled], name=f"{scale.name}/hoisted"))
        new_matmul = onnx.NodeProto()
        new_matmul.CopyFrom(matmul)
        new_matmul.input[index] = scaled
        new_matmul.output[0] = scale.output[0]       # the MatMul now writes what the scale wrote
        out.graph.node.append(new_matmul)
        entries.append({"pattern": "scale", "nodes": [scale.name, matmul.name], "op": scale.op_type,
                        "operand": matmul.input[index],
                        "elements_before": int(np.prod(out_shape)), "elements_after": int(np.prod(operand_shape))})
    return out, entries


def _public_scale(view: GraphView, operand: str, matmul: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """(the Mul, the index of its constant) when ``operand`` is a Mul by a one-element public float constant (a
    Constant node: an initializer is the owner's secret weight) whose only consumer is ``matmul``."""
    mul = view.producer.get(operand)
    if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2 \
            or view.only_consumer(operand) is not matmul:
        return None
    for i in (1, 0):
        value = view.public_scalar(mul.input[i])
        if value is not None and value.ndim <= len(view.shape(mul.input[1 - i]) or ()):
            return mul, i
    return None


def merge_operand_scales(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """(A * a) @ (B * b) = (A * ab) @ B for public scalar constants a and b, the product on the smaller operand.

    torch's export of scaled_dot_product_attention scales both the query and the key by sqrt(1/sqrt(d)): two
    truncations per element of each, where one on the query does. Returns the model and one report entry per
    merge (in the form of :func:`hoist_scales`' entries)."""
    from onnx import numpy_helper

    view = GraphView(model)
    replace: dict[str, list[onnx.NodeProto]] = {}      # output name -> the nodes emitted in its place
    entries = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        scales = [_public_scale(view, name, node) for name in node.input]
        shapes = [view.shape(name) for name in node.input]
        if any(s is None for s in scales) or any(s is None for s in shapes) or node.input[0] == node.input[1]:
            continue
        sizes = [int(np.prod(s)) for s in shapes]
        keep = int(np.argmin(sizes))
        (kept, kept_i), (dropped, dropped_i) = scales[keep], scales[1 - keep]
        kept_value = view.public_scalar(kept.input[kept_i])
        merged = (kept_value * view.public_scalar(dropped.input[dropped_i])).astype(kept_value.dtype)
        merged_name = f"{kept.output[0]}/merged_scale"
        new_kept = onnx.NodeProto()
        new_kept.CopyFrom(kept)
        new_kept.input[kept_i] = merged_name
        replace[kept.output[0]] = [
            helper.make_node("Constant", [], [merged_name], name=merged_name,
                             value=numpy_helper.from_array(merged, merged_name)), new_kept]
        replace[dropped.output[0]] = []
        new_matmul = onnx.NodeProto()
        new_matmul.CopyFrom(node)
        new_matmul.input[1 - keep] = dropped.input[1 - dropped_i]
        replace[node.output[0]] = [new_matmul]
        entries.append({"pattern": "scale", "nodes": [dropped.name, kept.name, node.name], "op": "Mul",
                        "operand": kept.input[1 - kept_i], "elements_before": sizes[0] + sizes[1],
                        "elements_after": sizes[keep]})
    if not entries:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in model.graph.node:
        out.graph.node.extend(replace.get(node.output[0], [node]) if node.output else [node])
    return out, entries
