"""Canonicalize: fold every exporter spelling of an expensive nonlinear op into one cipherdm:: node.

Rules are tried on nodes from the last to the first, so the largest spelling (a whole GELU chain) claims its
nodes before a piece of it (its Erf) is considered. Nodes that depend only on public values are left alone: SPU
computes them in the clear at no cost, and an approximation would only lose accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.registry import CIPHERDM_DOMAIN
from passes.cleanup import remove_dead_code
from passes.graph_view import GraphView
from passes.match import Decline, Match
from passes.public import public_initializers, public_tensors
from passes.rules.norms import GroupNormRule, LayerNormRule
from passes.rules.pointwise import PointwiseRule
from passes.rules.softmax import SoftmaxRule

RULES = (GroupNormRule(), LayerNormRule(), SoftmaxRule(), PointwiseRule())

CANONICAL_OPS = {
    "silu": "SiLU", "mish": "Mish", "gelu": "GELU", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp",
    "reciprocal": "Reciprocal", "rsqrt": "Rsqrt", "softmax": "SoftMax", "group_norm": "GroupNorm",
    "layer_norm": "LayerNorm",
}
PATTERN_OF_OP = {op: pattern for pattern, op in CANONICAL_OPS.items()}


@dataclass
class CanonicalNode:
    """A canonical node in the rewritten graph, with what it replaced (for the report)."""

    node: onnx.NodeProto
    pattern: str
    original: list[str]        # names of the replaced nodes
    original_ops: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class CanonicalizeResult:
    model: onnx.ModelProto
    canonical: list[CanonicalNode]
    declined: list[Decline]


def canonicalize(model: onnx.ModelProto, public_inputs: set[str] = frozenset()) -> CanonicalizeResult:
    view = GraphView(model)
    public = public_tensors(model, set(public_inputs) | public_initializers(model, set(public_inputs)))
    claimed: set[int] = set()
    matches: list[Match] = []
    declined: list[Decline] = []
    for node in reversed(list(model.graph.node)):
        if id(node) in claimed:
            continue
        in_the_clear = bool(node.output) and node.output[0] in public
        for rule in RULES:
            if node.op_type not in rule.anchors:
                continue
            result = rule.match(view, node)
            if result is None:
                continue
            if isinstance(result, Decline):
                if not in_the_clear:  # a public subgraph costs nothing whatever its shape
                    declined.append(result)
                continue
            if any(id(n) in claimed for n in result.nodes):
                continue
            if result.inputs[0] in public:
                declined.append(Decline(result.pattern, [view.node_name(n) for n in result.nodes],
                                        "depends only on public inputs and constants: computed in the clear at no "
                                        "MPC cost"))
            else:
                matches.append(result)
            claimed.update(id(n) for n in result.nodes)
            break
    # A decline is moot when another rule later matched the same nodes.
    matched_names = {view.node_name(n) for m in matches for n in m.nodes}
    declined = [d for d in declined if not set(d.nodes) <= matched_names]
    return _apply(model, view, matches, declined)


def _apply(model: onnx.ModelProto, view: GraphView, matches: list[Match], declined: list[Decline]
           ) -> CanonicalizeResult:
    replaced = {id(n) for m in matches for n in m.nodes}
    by_root = {id(m.root): m for m in matches}
    new_nodes, extra_inits, canonical = [], [], []
    for node in model.graph.node:
        match = by_root.get(id(node))
        if match is not None:
            prelude, canon = _build(view, match, extra_inits)
            new_nodes += prelude + [canon.node]
            canonical.append(canon)
        elif id(node) not in replaced:
            new_nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(extra_inits)
    if canonical and not any(o.domain == CIPHERDM_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CIPHERDM_DOMAIN, 1))
    return CanonicalizeResult(remove_dead_code(out), canonical, declined)


def _build(view: GraphView, match: Match, extra_inits: list) -> tuple[list[onnx.NodeProto], CanonicalNode]:
    root_name = view.node_name(match.root)
    prelude = []
    inputs = list(match.inputs)
    attrs = {k: v for k, v in match.attrs.items() if k != "scale_per_group"}
    if match.pattern == "group_norm":
        inputs[1:] = [_per_channel(view, match, name, i, prelude, extra_inits) for i, name in
                      enumerate(inputs[1:3])]
    elif match.pattern == "layer_norm":
        # The canonical LayerNorm always has scale and bias (the protocol's function body uses both).
        normalized = view.shape(inputs[0])[match.attrs["axis"]:]
        for index, fill in ((1, 1.0), (2, 0.0)):
            if not inputs[index]:
                inputs[index] = f"cipherdm/{root_name}/{'scale' if index == 1 else 'bias'}"
                extra_inits.append(numpy_helper.from_array(np.full(normalized, fill, np.float32), inputs[index]))
    node = helper.make_node(CANONICAL_OPS[match.pattern], inputs, [match.output], name=f"cipherdm/{root_name}",
                            domain=CIPHERDM_DOMAIN, **attrs)
    return prelude, CanonicalNode(node, match.pattern, [view.node_name(n) for n in match.nodes],
                                  [n.op_type for n in match.nodes], dict(match.attrs))


def _per_channel(view: GraphView, match: Match, name: str, index: int, prelude: list, extra_inits: list) -> str:
    """GroupNorm's scale/bias as one value per channel: reshape [C,1,1], or repeat opset 18's per-group values."""
    channels = view.shape(match.inputs[0])[1]
    base = f"cipherdm/{view.node_name(match.root)}/{'scale' if index == 0 else 'bias'}"
    if not name:
        value = np.ones(channels, np.float32) if index == 0 else np.zeros(channels, np.float32)
        extra_inits.append(numpy_helper.from_array(value, base))
        return base
    shape_name = f"{base}/shape"
    if match.attrs.get("scale_per_group"):
        groups = match.attrs["num_groups"]
        extra_inits.append(numpy_helper.from_array(np.array([groups, 1], np.int64), f"{base}/grouped"))
        extra_inits.append(numpy_helper.from_array(np.array([groups, channels // groups], np.int64),
                                                   f"{base}/expanded"))
        prelude.append(helper.make_node("Reshape", [name, f"{base}/grouped"], [f"{base}/g"]))
        prelude.append(helper.make_node("Expand", [f"{base}/g", f"{base}/expanded"], [f"{base}/e"]))
        name = f"{base}/e"
    extra_inits.append(numpy_helper.from_array(np.array([channels], np.int64), shape_name))
    prelude.append(helper.make_node("Reshape", [name, shape_name], [base]))
    return base
