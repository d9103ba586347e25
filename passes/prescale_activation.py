"""Fold an activation's input scale into the GroupNorm before it.

A piecewise activation (SiLU, GELU, Mish: ``abs_piecewise`` in form ``relu_minus``) evaluates its polynomials in
w = 2|x|/B - 1, and the product |x| * 2/B is one truncation per element (28 of SiLU's ~690 bytes). In a U-Net
nearly every SiLU follows a GroupNorm, whose output is centered * (scale * inv_std) + bias: scaling its per-channel
``scale`` and ``bias`` by 1/B hands the activation x / B. Then w = 2|x/B| - 1 is exact, and relu(x) = B relu(x/B)
is a sum of doublings (B is a whole number): no truncation at all. The protocol node takes x / B (its ``prescaled``
parameter), so its plaintext function body stays exact.

Where scale and bias are weights (initializers) the division happens here, at compile time, in the weights the
model owner shares: nothing is added to the program (a product under MPC would cost C truncations and two rounds
per GroupNorm, 58 rounds on the MNIST U-Net). The report lists every divided weight (``weights_divided``), and
:func:`restore_divided_weights` puts the factor back into the float graph the program keeps as its plaintext
twin, which runs on the same weights file. A public constant is divided likewise; anything else gets a Mul
(charged to the activation).

Applies where the activation's input is a GroupNorm protocol node's output with no other consumer (and not a graph
output). Runs after the protocol choice (B depends on the chosen variant); the report entry records the fold.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

import runtime.protocols as protocols
from passes.graph_view import GraphView, charge_to, public_constant, with_replacements

FOLDABLE = ("silu", "gelu", "mish")


def prescaled(protocol: protocols.Protocol) -> protocols.Protocol:
    """The same activation taking x / B instead of x."""
    return dataclasses.replace(protocol, name=f"{protocol.name}@i", params={**protocol.params, "prescaled": True})


def _foldable(protocol: protocols.Protocol) -> bool:
    bound = float(protocol.params.get("bound", 0.0))
    return (protocol.family == "abs_piecewise" and protocol.params.get("form") == "relu_minus"
            and not protocol.params.get("prescaled") and bound >= 1 and bound == int(bound))


def _why_not(view: GraphView, node: onnx.NodeProto) -> tuple[str | None, onnx.NodeProto | None]:
    protocol = protocols.from_onnx_attributes(view.attrs(node), op_type=node.op_type)
    if not _foldable(protocol):
        return f"{protocol.name} has no input scale to fold", None
    source = node.input[0]
    norm = view.producer.get(source)
    if norm is None or norm.domain != protocols.DOMAIN or norm.op_type != protocols.OP_TYPES["group_norm"]:
        return "its input does not come from a GroupNorm", None
    if len(norm.input) < 3 or not norm.input[1] or not norm.input[2]:
        return "the GroupNorm has no scale and bias to fold into", None
    if len(view.consumers[source]) != 1 or source in view.graph_outputs:
        return "the GroupNorm's output has other uses", None
    return None, norm


def fold_activation_scales(model: onnx.ModelProto, rewrites: list[dict],
                           divided: list[dict] | None = None) -> onnx.ModelProto:
    """Fold every foldable activation's 1/B into the GroupNorm before it; updates ``rewrites`` (report entries,
    matched by node name) in place and appends to ``divided`` one ``{"weight", "divisor", "for"}`` per weight
    divided at compile time."""
    divided = [] if divided is None else divided
    view = GraphView(model)
    entries = {r["node"]: r for r in rewrites}
    types = {protocols.OP_TYPES[op] for op in FOLDABLE}
    by_output, added = {}, []
    divided_weights: dict[str, onnx.TensorProto] = {}
    copies: list[onnx.TensorProto] = []
    for node in model.graph.node:
        if node.domain != protocols.DOMAIN or node.op_type not in types:
            continue
        why, norm = _why_not(view, node)
        entry = entries.get(node.name)
        if norm is None:
            if entry is not None:
                entry["input_scale"] = f"the input scale stays in the protocol: {why}"
            continue
        protocol = protocols.from_onnx_attributes(view.attrs(node), op_type=node.op_type)
        scaled = prescaled(protocol)
        added.append(scaled)
        bound = float(protocol.params["bound"])
        new_norm = onnx.NodeProto()
        new_norm.CopyFrom(norm)
        products, ways = [], []
        for i, what in ((1, "scale"), (2, "bias")):
            source_name, divided_name = norm.input[i], f"{norm.input[i]}/over_bound/{node.name}"
            weight, sole = _weight_behind(view, source_name)
            if weight is not None and sole:
                value = numpy_helper.to_array(view.initializers[weight])
                divided_weights[weight] = numpy_helper.from_array((value / bound).astype(value.dtype), weight)
                divided.append({"weight": weight, "divisor": bound, "for": node.name})
                ways.append(f"{what} divided in the weights")
                continue
            new_norm.input[i] = divided_name
            shape = view.shape(source_name)
            value = view.constant(source_name)
            if weight is not None and shape is not None:
                # read elsewhere too (exporters share identical initializers): a divided copy, in the shape the
                # GroupNorm reads (reshapes keep the order of the values)
                original = numpy_helper.to_array(view.initializers[weight])
                copies.append(numpy_helper.from_array((original / bound).astype(original.dtype).reshape(shape),
                                                      divided_name))
                divided.append({"weight": divided_name, "divisor": bound, "for": node.name, "copy_of": weight,
                                "shape": list(original.shape), "copy_shape": [int(d) for d in shape]})
                ways.append(f"{what} divided in a copy of the weights")
            elif value is not None and view.producer.get(source_name) is not None:
                products.append(public_constant(divided_name, (value / bound).astype(value.dtype)))
                ways.append(f"{what} a divided public constant")
            else:
                # a public operand makes the product public too (computed in the clear); a secret one, a product
                # under MPC of C values, one truncation
                ways.append(f"{what} times 1/{bound:g} in the program")
                inverse = f"{node.name}/inverse_bound"
                if not any(p.output[0] == inverse for p in products):
                    products.append(public_constant(inverse, np.array(1.0 / bound, np.float32)))
                products.append(helper.make_node("Mul", [source_name, inverse], [divided_name],
                                                 name=f"{node.name}/{what}_over_bound"))
        by_output[norm.output[0]] = [*charge_to(node.name, products), new_norm]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.name not in protocols.to_onnx_attributes(protocol)}
        by_output[node.output[0]] = [protocols.make_node(scaled, node.input, node.output[0], node.name, **attrs)]
        if entry is not None:
            entry["protocol"], entry["params"] = scaled.name, scaled.params
            entry["input_scale"] = (f"1/{bound:g} folded into {norm.name}'s scale and bias ({', '.join(ways)}): "
                                    f"|x| * 2/B without a truncation, relu(x) = {bound:g} relu(x/{bound:g}) by "
                                    "additions")
    if not by_output:
        return model
    out = with_replacements(model, by_output, added)
    for init in out.graph.initializer:
        if init.name in divided_weights:
            init.CopyFrom(divided_weights[init.name])
    out.graph.initializer.extend(copies)
    return out


LAYOUT_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")


def _weight_behind(view: GraphView, name: str) -> tuple[str | None, bool]:
    """(the float initializer that ``name`` is a reshaped view of, whether nothing else reads it or any tensor on
    the way, so that dividing it in place changes this GroupNorm only), or (None, False)."""
    sole = True
    while name not in view.initializers:
        producer = view.producer.get(name)
        if producer is None or producer.op_type not in LAYOUT_OPS or producer.domain not in ("", "ai.onnx"):
            return None, False
        sole = sole and len(view.consumers[name]) == 1 and name not in view.graph_outputs
        name = producer.input[0]
    init = view.initializers[name]
    if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return None, False
    return name, sole and len(view.consumers[name]) == 1 and name not in view.graph_outputs


def restore_divided_weights(model: onnx.ModelProto, divided: list[dict],
                            weights: set[str] | None = None) -> onnx.ModelProto:
    """``model`` (a float graph whose weights are graph inputs) computing the same as before from the program's
    weights (names in ``weights``; None: every divided weight's original is among them): each weight divided in
    place is multiplied back by its divisor where the graph reads it, and an original that only divided copies
    replaced (no longer a weight of the program) is rebuilt from its first copy."""
    if not divided:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = {d["weight"]: f"{d['weight']}/restored" for d in divided if "copy_of" not in d}
    rebuilt = {}
    for d in divided:
        if "copy_of" in d and weights is not None and d["copy_of"] not in weights and d["copy_of"] not in rebuilt:
            rebuilt[d["copy_of"]] = d
    for node in out.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    head = []
    for d in divided:
        if d["weight"] in renamed:
            factor = f"{d['weight']}/divisor"
            head += [public_constant(factor, np.array(d["divisor"], np.float32)),
                     helper.make_node("Mul", [d["weight"], factor], [renamed[d["weight"]]],
                                      name=f"{d['weight']}/restore")]
    for original, d in rebuilt.items():
        factor, shape, scaled = f"{original}/divisor", f"{original}/shape", f"{original}/rebuilt_scaled"
        head += [public_constant(factor, np.array(d["divisor"], np.float32)),
                 public_constant(shape, np.array(d["shape"], np.int64)),
                 helper.make_node("Mul", [d["weight"], factor], [scaled], name=f"{original}/rebuild_scale"),
                 helper.make_node("Reshape", [scaled, shape], [original], name=f"{original}/rebuild")]
        # the copy is the program's weight now; the original is computed from it
        inputs = list(out.graph.input)
        at = next(k for k, i in enumerate(inputs) if i.name == original)
        inputs[at] = helper.make_tensor_value_info(d["weight"], inputs[at].type.tensor_type.elem_type,
                                                   d["copy_shape"])
        del out.graph.input[:]
        out.graph.input.extend(inputs)
    nodes = head + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
