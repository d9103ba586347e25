"""Fold a softmax's input scale into the product before it.

The exp inside a SoftMax protocol evaluates its polynomial in monic form in z = gamma x
(``runtime.protocols.families.monic_form``), so its coefficients cost no truncations; what is left is the scale
gamma x itself, one truncation per score. Attention's scores come from a MatMul, and a scalar scale of a product
can sit on either operand: on the query it costs n x d truncations instead of n x n, and when the query is already
scaled by a constant (the 1/sqrt(d) that passes/hoist_scale.py moved there) the two constants merge and the scale
costs nothing. The protocol node then takes z directly (its ``prescaled`` parameter; every shift and clip constant
is scaled by gamma inside it), so its plaintext function body stays exact.

Applies to softmax protocol nodes whose exp has a monic form (degree <= 3) and whose input is a MatMul product
with no other consumer, when the MatMul's smaller operand is smaller than the product. Runs after the protocol
choice (gamma depends on the chosen exp); the report entry records the fold, and a Mul added here counts in its
estimated bytes and rounds (``charge_to``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

import runtime.protocols as protocols
from passes.graph_view import GraphView, charge_to, public_constant, with_replacements
from runtime.protocols.families import monic_applies, monic_form

FAMILIES = ("softmax_shift", "softmax_max")
SCALES = ("Mul", "Div")


def prescaled(protocol: protocols.Protocol) -> protocols.Protocol:
    """The same softmax protocol taking gamma x instead of x."""
    return dataclasses.replace(protocol, name=f"{protocol.name}@s", params={**protocol.params, "prescaled": True})


def input_scale(protocol: protocols.Protocol) -> float | None:
    """gamma when the protocol can take a prescaled input, else None."""
    if protocol.family not in FAMILIES or protocol.params.get("prescaled"):
        return None
    exp = protocol.params["exp"]
    return monic_form(exp)[0] if monic_applies(exp) else None


@dataclasses.dataclass
class _Fold:
    node: onnx.NodeProto        # the softmax protocol node
    protocol: protocols.Protocol
    gamma: float
    matmul: onnx.NodeProto
    index: int                  # the MatMul operand that takes the scale
    scale: onnx.NodeProto | None  # that operand's own scalar scale, merged with gamma; None: a new Mul
    const_index: int | None     # which input of ``scale`` is its constant
    operand_size: int


def _why_not(view: GraphView, node: onnx.NodeProto) -> tuple[str | None, _Fold | None]:
    protocol = protocols.from_onnx_attributes(view.attrs(node), op_type=node.op_type)
    if protocol.family not in FAMILIES:
        return f"the {protocol.family} protocol has no exp to prescale", None
    if protocol.params.get("prescaled"):
        return None, None    # scaled already (a box-bounded softmax's queries carry exp's input scale)
    gamma = input_scale(protocol)
    if gamma is None:
        return "its exp has no monic form (degree above 3)", None
    why, matmul = view.sole_matmul(node.input[0], node)
    if why:
        return why, None
    shapes = [view.shape(name) for name in matmul.input]
    out_shape = view.shape(matmul.output[0])
    if any(s is None for s in shapes) or out_shape is None:
        return "the MatMul's shapes are unknown", None
    sizes = [int(np.prod(s)) for s in shapes]
    index = int(np.argmin(sizes))
    if sizes[index] >= int(np.prod(out_shape)):
        return "neither MatMul operand is smaller than the product", None
    operand = matmul.input[index]
    scale = view.producer.get(operand)
    const_index = None
    if scale is not None and scale.op_type in SCALES and scale.domain in ("", "ai.onnx") and len(scale.input) == 2 \
            and view.only_consumer(operand) is matmul:
        const_index = _scalar_const(view, scale)
    if const_index is None:
        scale = None
    return None, _Fold(node, protocol, gamma, matmul, index, scale, const_index, sizes[index])


def _scalar_const(view: GraphView, scale: onnx.NodeProto) -> int | None:
    """Which input of a Mul/Div is a one-element public float constant (a Div's divisor only)."""
    for i in ((1, 0) if scale.op_type == "Mul" else (1,)):
        if view.public_scalar(scale.input[i]) is not None:
            return i
    return None


def fold_prescales(model: onnx.ModelProto, rewrites: list[dict]) -> onnx.ModelProto:
    """Fold every foldable softmax input scale into its MatMul; updates ``rewrites`` (report entries, matched by
    node name) in place."""
    view = GraphView(model)
    entries = {r["node"]: r for r in rewrites}
    folds: list[_Fold] = []
    for node in model.graph.node:
        if node.domain != protocols.DOMAIN or node.op_type != protocols.OP_TYPES["softmax"]:
            continue
        why, fold = _why_not(view, node)
        if fold is not None:
            folds.append(fold)
        elif why and node.name in entries:
            entries[node.name]["prescale"] = f"the input scale stays in the protocol: {why}"
    if not folds:
        return model

    by_output = {}       # node output -> replacement node(s), emitted where the original stood
    added = []
    for f in folds:
        s_protocol = prescaled(f.protocol)
        added.append(s_protocol)
        attrs = {a.name: helper.get_attribute_value(a) for a in f.node.attribute if a.name == "axis"}
        by_output[f.node.output[0]] = [protocols.make_node(s_protocol, f.node.input, f.node.output[0],
                                                           f.node.name, **attrs)]
        gamma_name = f"{f.node.name}/input_scale"
        if f.scale is not None:
            i = f.const_index
            value = view.public_scalar(f.scale.input[i])
            merged = value * f.gamma if f.scale.op_type == "Mul" else value / f.gamma
            new_scale = onnx.NodeProto()
            new_scale.CopyFrom(f.scale)
            new_scale.input[i] = gamma_name
            by_output[f.scale.output[0]] = [public_constant(gamma_name, merged.astype(value.dtype)), new_scale]
            how = f"merged into {f.scale.name} (no truncation of its own)"
        else:
            scaled = f"{f.matmul.input[f.index]}/prescaled_for/{f.node.name}"
            new_matmul = onnx.NodeProto()
            new_matmul.CopyFrom(f.matmul)
            new_matmul.input[f.index] = scaled
            by_output[f.matmul.output[0]] = [
                *charge_to(f.node.name, [
                    public_constant(gamma_name, np.array(f.gamma, np.float32)),
                    helper.make_node("Mul", [f.matmul.input[f.index], gamma_name], [scaled],
                                     name=f"{f.node.name}/prescale")]),
                new_matmul]
            how = f"on {f.matmul.name}'s operand {f.matmul.input[f.index]} ({f.operand_size} truncations)"
        entry = entries.get(f.node.name)
        if entry is not None:
            entry["protocol"], entry["params"] = s_protocol.name, s_protocol.params
            entry["prescale"] = f"input scale {f.gamma:.6g} folded into {f.matmul.name}: {how}"
    return with_replacements(model, by_output, added)
