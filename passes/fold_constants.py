"""Fold constant subgraphs into Constant nodes.

Exporters compute some constants at run time from static shapes: torch's export of scaled_dot_product_attention
takes its scale as Sqrt(Div(1, Sqrt(Cast(Slice(Shape(q)))))) and multiplies both the query and the key by it.
Those values are public either way (public-value analysis computes them in the clear), but only a constant can
move: passes/hoist_scale.py and passes/prescale.py fold scalar constants into products. So every node whose
inputs are all known without the model's inputs (Constant nodes, integer initializers, the Shape or Size of a
tensor with a static shape) is evaluated here with ONNX's reference implementation, and the values other nodes
use become Constant nodes.

Float initializers are never folded through: they are the model owner's secret weights, and a folded value
would be baked into the public program. Only small results are emitted (at most MAX_ELEMENTS each); a larger
constant stays computed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.lowering import is_weight
from passes.graph_view import GraphView

MAX_ELEMENTS = 4096
# ops whose result is not a function of their inputs
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """The model with its constant subgraphs folded, and one report entry per emitted Constant."""
    from onnx.reference import ReferenceEvaluator

    view = GraphView(model)
    opsets = {o.domain or "": o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    known: dict[str, np.ndarray] = dict(view.constants)          # Constant nodes
    known.update({init.name: numpy_helper.to_array(init) for init in model.graph.initializer
                  if not is_weight(init)})
    folded: dict[int, list[str]] = {}                            # id(node) -> its outputs
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type == "Constant" or node.op_type in NONDETERMINISTIC:
            continue
        values = _shape_value(view, node)
        if values is None:
            inputs = [name for name in node.input if name]
            if not inputs or any(name not in known for name in inputs):
                continue
            try:
                values = ReferenceEvaluator(node, opsets=opsets).run(None, {name: known[name] for name in inputs})
            except Exception:  # an op the reference cannot run stays as it is
                continue
        known.update({name: np.asarray(v) for name, v in zip(node.output, values) if name})
        folded[id(node)] = [name for name in node.output if name]
    if not folded:
        return model, []

    # Users come after producers: walking backwards, a node's needs are complete when it is reached. A folded node
    # whose needed value is too large to bake in stays a node, and then its own inputs are needed.
    needed = set(view.graph_outputs)
    kept: set[int] = set()
    for node in reversed(model.graph.node):
        outputs = folded.get(id(node))
        if outputs is not None and not any(known[name].size > MAX_ELEMENTS for name in outputs if name in needed):
            continue
        if outputs is not None:
            kept.add(id(node))
        needed.update(node.input)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    entries = []
    for node in model.graph.node:
        if id(node) not in folded or id(node) in kept:
            out.graph.node.append(node)
            continue
        for name in folded[id(node)]:
            if name in needed:
                out.graph.node.append(helper.make_node("Constant", [], [name], name=f"{name}/folded",
                                                       value=numpy_helper.from_array(known[name], name)))
                entries.append({"node": node.name or node.op_type, "op": node.op_type, "output": name,
                                "shape": list(known[name].shape)})
    return out, entries


def _shape_value(view: GraphView, node: onnx.NodeProto) -> list[np.ndarray] | None:
    """Shape / Size of a tensor whose shape is static."""
    if node.op_type not in ("Shape", "Size") or not node.input:
        return None
    shape = view.shape(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return [np.array(int(np.prod(shape, dtype=np.int64)), np.int64)]
    attrs = view.attrs(node)
    rank = len(shape)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else int(end)
    end = min(rank, end + rank if end < 0 else end)
    return [np.array(shape[start:end], np.int64)]
