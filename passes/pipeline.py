"""The MPC rewrite pipeline: canonicalize, calibrate, choose a protocol per node, rewrite, clean up, report.

The rewritten model stays valid ONNX: every cipherdm:: node carries an ONNX function body with its exact
plaintext semantics, so onnxruntime runs it (to measure approximation error without MPC) and Netron opens it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import version_converter

import runtime.protocols as protocols
from passes.calibrate import TensorStats, calibrate
from passes.canonicalize import canonicalize
from passes.choose import choose, error_curve
from passes.cost import estimate_model
from passes.expand_attention import EXPANDED_FROM, expand_attention
from passes.graph_view import GraphView
from passes.report import add_totals, empty_report

DEFAULT_BUDGET = 1e-2


@dataclass
class PassResult:
    model: onnx.ModelProto
    report: dict
    knobs: protocols.SpuKnobs


def rewrite(model: onnx.ModelProto, *, public_inputs=frozenset(), calibration: list[dict] | None = None,
            budget: float = DEFAULT_BUDGET, calibration_source: str | None = None) -> PassResult:
    """Rewrite every expensive nonlinear subgraph of ``model`` into the cheapest protocol within ``budget``.

    ``calibration`` is a list of input dicts (one per case); without it conservative ranges are used.
    """
    original = model
    model, attention_declined = expand_attention(_at_least_opset_18(model))
    expanded_from = {n.name: m.value for n in model.graph.node for m in n.metadata_props if m.key == EXPANDED_FROM}
    canon = canonicalize(model, set(public_inputs))
    report = empty_report("cipherdm")
    report["budget"] = budget
    report["declined"] = [d.to_json() for d in attention_declined + canon.declined]
    watched = [c.node.input[0] for c in canon.canonical]
    stats: dict[str, TensorStats] = calibrate(model, watched, calibration) if calibration else {}
    report["calibration"] = _calibration_note(calibration, calibration_source)
    view = GraphView(canon.model)
    knobs = protocols.SpuKnobs()
    used: list[protocols.Protocol] = []
    replacements: dict[str, onnx.NodeProto] = {}  # by output name: protobuf copies nodes
    for entry in canon.canonical:
        node, op = entry.node, entry.pattern
        shape = view.shape(node.input[0])
        extra = [_value(view, name) for name in node.input[1:]]
        choice = choose(op, shape, entry.attrs, stats.get(node.input[0]), budget, extra, knobs)
        direct = protocols.direct(op, **_gelu_kw(op, entry.attrs))
        cost_kw = {k: entry.attrs[k] for k in ("num_groups", "axis") if k in entry.attrs}
        before = direct.cost(shape, **cost_kw)
        if choice.protocol is None:
            used.append(direct)
            replacements[node.output[0]] = protocols.make_node(direct, node.input, node.output[0], node.name,
                                                         **_op_attrs(op, entry.attrs))
            report["declined"].append({"pattern": op, "nodes": entry.original,
                                       "reason": f"{choice.reason}; kept SPU's own expression"})
            continue
        chosen = choice.protocol
        knobs = knobs.merged(chosen.knobs)
        used.append(chosen)
        replacements[node.output[0]] = protocols.make_node(chosen, node.input, node.output[0], node.name,
                                                     **_op_attrs(op, entry.attrs))
        after = chosen.cost(shape, **cost_kw)
        # A softmax that came out of an Attention op is reported as that attention.
        origin = [expanded_from[n] for n in entry.original if n in expanded_from]
        report["rewrites"].append({
            "pattern": "attention" if origin else op, "op": op, "node": node.name,
            "nodes": origin or entry.original, "ops": ["Attention"] if origin else entry.original_ops,
            "protocol": chosen.name, "family": chosen.family, "params": chosen.params,
            "spu_knobs": chosen.knobs.to_json(), "shape": list(shape), "elements": int(np.prod(shape)),
            "interval": [float(v) for v in choice.interval], "calibrated": node.input[0] in stats,
            "error_max": choice.error["max"], "error_mean": choice.error["mean"],
            "est_bytes_before": float(before.bytes), "est_bytes_after": float(after.bytes),
            "est_rounds_before": float(before.rounds), "est_rounds_after": float(after.rounds),
            "curve": error_curve(chosen, op, choice.interval, entry.attrs),
        })
    out = _replace_nodes(canon.model, replacements)
    protocols.add_functions(out, used)
    report["knobs"] = knobs.to_json()
    add_totals(report)
    # Whole-model estimates (passes/cost.py): the model as given under SPU's defaults, and the rewritten one.
    report["model_estimate"] = {
        mode: {key: est["totals"][key] for key in ("bytes", "rounds")}
        for mode, est in (("direct", estimate_model(original, set(public_inputs), {})),
                          ("rewritten", estimate_model(out, set(public_inputs), knobs.to_json())))}
    onnx.checker.check_model(out)
    return PassResult(out, report, knobs)


def direct_report(model: onnx.ModelProto, public_inputs=frozenset()) -> dict:
    """What the passes would rewrite, for a ``--direct`` program compiled without rewrites."""
    canon = canonicalize(model, set(public_inputs))
    report = empty_report("direct")
    report["declined"] = [d.to_json() for d in canon.declined] + [
        {"pattern": c.pattern, "nodes": c.original, "reason": "compiled with --direct: no MPC rewrites"}
        for c in canon.canonical]
    return add_totals(report)


def _at_least_opset_18(model: onnx.ModelProto) -> onnx.ModelProto:
    # Protocol function bodies use opset-18 ops (ReduceMean with an axes input); ONNX wants the model to match.
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:
        return model
    upgraded = version_converter.convert_version(model, 18)
    return onnx.shape_inference.infer_shapes(upgraded, data_prop=True)


def _calibration_note(calibration, source) -> dict:
    if not calibration:
        return {"source": None, "cases": 0, "conservative": True,
                "note": "no calibration data: conservative per-op ranges were assumed (pass --calibration to "
                        "choose protocols for the ranges the model really sees)"}
    return {"source": source, "cases": len(calibration), "conservative": False,
            "note": f"{len(calibration)} calibration case(s) from {source or 'memory'}; ranges widened by 10%"}


def _gelu_kw(op: str, attrs: dict) -> dict:
    return {"approximate": attrs.get("approximate", "none")} if op == "gelu" else {}


def _op_attrs(op: str, attrs: dict) -> dict:
    keys = {"softmax": ("axis",), "group_norm": ("num_groups", "epsilon"), "layer_norm": ("axis", "epsilon"),
            "gelu": ("approximate",)}.get(op, ())
    return {k: attrs[k] for k in keys if k in attrs}


def _value(view: GraphView, name: str) -> np.ndarray | None:
    """Scale/bias values for measuring a norm's error: initializers, through the Reshape/Expand canonicalize adds."""
    if not name:
        return None
    value = view.constant(name)
    if value is not None:
        return np.asarray(value, np.float64)
    producer = view.producer.get(name)
    if producer is None or producer.op_type not in ("Reshape", "Expand"):
        return None
    inner, target = _value(view, producer.input[0]), view.constant(producer.input[1])
    if inner is None or target is None:
        return None
    target = tuple(int(d) for d in target)
    return inner.reshape(target) if producer.op_type == "Reshape" else np.broadcast_to(inner, target).copy()


def _replace_nodes(model: onnx.ModelProto, replacements: dict[str, onnx.NodeProto]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [replacements.get(n.output[0], n) if n.output else n for n in model.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
