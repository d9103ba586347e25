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
from passes.box_bound import BOX_RANGE, BoxRange, calibrated_ranges, construct, is_box
from passes.calibrate import TensorStats, calibrate
from passes.cleanup import remove_dead_code
from passes.canonicalize import canonicalize
from passes.choose import QUERY_BOUND, choose, error_curve, norm_parameters, summaries_for
from passes.cost import estimate_model
from passes.expand_attention import EXPANDED_FROM, expand_attention
from passes.fuse_attention import fuse_attention
from passes.query_bounds import bound_on_queries, scores_product
from passes import model_check
from passes.graph_view import GraphView, with_replacements
from passes.fold_constants import fold_constants
from passes.hoist_scale import hoist_scales, merge_operand_scales
from passes.prescale import fold_prescales
from passes.prescale_activation import fold_activation_scales
from passes.model_check import DEFAULT_MODEL_ERROR
from passes.network import Network
from passes.relax import relax
from passes.report import add_totals, charge_estimates, empty_report
from runtime.protocols.families import monic_form

DEFAULT_BUDGET = 1e-2


@dataclass
class PassResult:
    model: onnx.ModelProto
    report: dict
    knobs: protocols.SpuKnobs


def rewrite(model: onnx.ModelProto, *, public_inputs=frozenset(), calibration: list[dict] | None = None,
            budget: float = DEFAULT_BUDGET, calibration_source: str | None = None,
            model_error: float | None = DEFAULT_MODEL_ERROR, fraction_bits: int | None = None,
            network: Network | None = None, validation: list[dict] | None = None,
            validation_source: str | None = None) -> PassResult:
    """Rewrite every expensive nonlinear subgraph of ``model`` into the cheapest protocol within ``budget``.

    ``calibration`` is a list of input dicts (one per case); without it conservative ranges are used. With it and
    ``model_error`` (max abs output error / output std), the rewritten graph is checked against the float model
    on the calibration cases and the budgets of the nodes that cause too large an error are tightened
    (passes/model_check.py). ``fraction_bits``: the program's fixed-point precision, which sets how far SPU's
    run of each protocol strays from its float emulation (measured per protocol at 18 and 22 bits). ``network``:
    rank the protocols by their estimated time on it instead of by bytes (passes/network.py). ``validation``:
    input dicts the choice does not see; the final graph's error on them goes into the report
    (model_check.validate).
    """
    original = model
    model, attention_declined = expand_attention(_at_least_opset_18(model))
    model, folded = fold_constants(model)
    model, merged = merge_operand_scales(model)
    model, hoisted = hoist_scales(model)
    expanded_from = {n.name: m.value for n in model.graph.node for m in n.metadata_props if m.key == EXPANDED_FROM}
    canon = canonicalize(model, set(public_inputs))
    watched = [c.node.input[0] for c in canon.canonical]
    summaries: dict[str, dict] = {}
    for c in canon.canonical:
        summaries.setdefault(c.node.input[0], {}).update(summaries_for(c.pattern, c.attrs))
    stats: dict[str, TensorStats] = calibrate(model, watched, calibration, summaries) if calibration else {}
    box_ranges = calibrated_ranges(model, _score_products(canon), calibration) if calibration else {}
    budgets = {c.node.output[0]: budget for c in canon.canonical}   # per node, by output name
    attempts: list[model_check.Attempt] = []
    checking = bool(calibration) and bool(model_error) and bool(budgets)
    choices: dict = {}   # (node, budget, knobs in use) -> Choice: the check and relax re-choose under new budgets
    def choose_under(budgets: dict[str, float]) -> _Chosen:
        return _choose_all(canon, stats, budgets, expanded_from, fraction_bits, choices, box_ranges, network)

    def check(budgets: dict[str, float]) -> float:
        return model_check.relative_error(model_check.run(choose_under(budgets).model, cases), reference)

    known_errors = None
    if checking:
        # every case once: the float reference, and the first choice's error per case, which picks the cases each
        # check runs (the worst half and a spread) and, at the end, says what the error is on all of them
        every_reference = model_check.run(original, calibration)
        first_errors = model_check.case_errors(model_check.run(choose_under(budgets).model, calibration),
                                               every_reference)
        picked = model_check.pick_indices(len(calibration), first_errors)
        cases, reference = [calibration[i] for i in picked], [every_reference[i] for i in picked]
        known_errors = [first_errors[i] for i in picked]    # the first attempt's, run already

    best = None   # (error, budgets, attempt number) of the most accurate attempt within the target
    while True:
        chosen = choose_under(budgets)
        if not checking:
            break
        per_case = known_errors or model_check.case_errors(model_check.run(chosen.model, cases), reference)
        known_errors = None
        error = max(per_case)
        attempt = model_check.Attempt(error, sum(b < budget for b in budgets.values()), [])
        attempts.append(attempt)
        if error <= model_error and (best is None or error < best[0]):
            best = (error, dict(budgets), len(attempts))
        if error <= model_check.GOAL * model_error or len(attempts) >= model_check.MAX_ATTEMPTS:
            break
        # each rewritten node's own share of the error: the model with only that node rewritten
        worst = model_check.worst_cases(per_case)
        solo_cases = [cases[i] for i in worst]
        solo_reference = [reference[i] for i in worst]
        solo = {key: model_check.relative_error(model_check.run(chosen.only({key}), solo_cases), solo_reference)
                for key in chosen.rewritten_keys()}
        attempt.worst = [{"node": chosen.names[k], "op": chosen.op_of[k], "error": e}
                         for k, e in sorted(solo.items(), key=lambda kv: -kv[1])[:model_check.REPORTED_NODES]]
        budgets = model_check.tightened(budgets, solo, model_error, chosen.errors, error)
    relaxed, kept_attempt = None, None
    if checking and best is not None and len(attempts) > 1:
        if best[2] != len(attempts):
            # the error is not monotone in the budgets: a later attempt can miss what an earlier one met
            kept_attempt = best[2]
        # the check aimed below the target; relax spends the slack where it saves the most bytes
        # (ranked by bytes, the costs are the bytes: no second choice per step for the report)
        relaxed = relax(best[1], budget, model_error, best[0], lambda b: choose_under(b).est_cost(network), check,
                        None if network is None else lambda b: choose_under(b).est_bytes)
        budgets = relaxed.budgets
        chosen = choose_under(budgets)
    report = empty_report("cipherdm")
    report["budget"] = budget
    report["budgets"] = _budgets_by_op(budgets, chosen.op_of, budget)
    every_case = None
    if checking and len(cases) < len(calibration):
        every_case = model_check.relative_error(model_check.run(chosen.model, calibration), every_reference)
    report["model_check"] = _model_check_note(attempts, model_error, calibration, checking,
                                              len(cases) if checking else 0, relaxed, kept_attempt, every_case)
    report["declined"] = [d.to_json() for d in attention_declined + canon.declined] + chosen.declined
    out = fuse_attention(chosen.model, chosen.rewrites)
    out = fold_prescales(out, chosen.rewrites)
    divided: list[dict] = []
    out = fold_activation_scales(out, chosen.rewrites, divided)
    out = bound_on_queries(out, chosen.rewrites)
    out = remove_dead_code(out)    # the scores' MatMul of a box-bounded softmax (recomputed from scaled queries)
    report["rewrites"] = chosen.rewrites
    report["weights_divided"] = divided
    report["scales_hoisted"] = merged + hoisted
    report["constants_folded"] = len(folded)
    report["calibration"] = _calibration_note(calibration, calibration_source)
    report["knobs"] = chosen.knobs.to_json()
    # Every rewrite entry priced as it ended up after the graph passes above, each op's rounds as if alone (like
    # the entries' costs before); then the whole-model estimates (passes/cost.py): the model as given under SPU's
    # defaults, and the rewritten one.
    charge_estimates(chosen.rewrites, out,
                     estimate_model(out, set(public_inputs), chosen.knobs.to_json(), effective_rounds=False))
    add_totals(report)
    estimates = {"direct": estimate_model(original, set(public_inputs), {}),
                 "rewritten": estimate_model(out, set(public_inputs), chosen.knobs.to_json())}
    report["model_estimate"] = {mode: {key: est["totals"][key] for key in ("bytes", "rounds")}
                                for mode, est in estimates.items()}
    report["network"] = None if network is None else network.to_json()
    if network is not None:
        for entry in report["model_estimate"].values():
            entry["seconds"] = network.seconds(entry["bytes"], entry["rounds"])
    onnx.checker.check_model(out)
    if validation:
        report["model_check"]["validation"] = model_check.validate(original, out, validation, model_error,
                                                                   validation_source)
    return PassResult(out, report, chosen.knobs)


@dataclass
class _Chosen:
    model: onnx.ModelProto
    rewrites: list[dict]
    declined: list[dict]
    knobs: protocols.SpuKnobs
    base: onnx.ModelProto                       # the canonical model
    replacements: dict[str, list[onnx.NodeProto]]   # by output name: the node(s) in its place (protobuf copies)
    plain: dict[str, onnx.NodeProto]            # the same nodes as SPU's own expression
    op_of: dict[str, str]
    used: list[protocols.Protocol]
    plain_used: list[protocols.Protocol]
    names: dict[str, str]                       # node name by output name
    errors: dict[str, float]                    # the chosen protocol's max error on the calibrated inputs
    est_bytes: dict[str, float]                 # the estimated bytes of every node's choice
    est_rounds: dict[str, float]                # and its rounds

    def est_cost(self, network: Network | None) -> dict[str, float]:
        """Every node's estimated cost in what the choice ranks by: bytes, or seconds on ``network``."""
        if network is None:
            return dict(self.est_bytes)
        return {k: network.seconds(b, self.est_rounds[k]) for k, b in self.est_bytes.items()}

    def rewritten_keys(self) -> list[str]:
        return [k for k in self.replacements if k in self.errors]

    def only(self, keys: set[str]) -> onnx.ModelProto:
        """The model with only these nodes rewritten (the rest as their plain expressions)."""
        mixed = {k: (v if k in keys else [self.plain[k]]) for k, v in self.replacements.items()}
        return with_replacements(self.base, mixed, self.used + self.plain_used)


def _score_products(canon) -> dict[str, onnx.NodeProto]:
    """The scores' MatMul of every softmax over attention scores, by the softmax's output."""
    view = GraphView(canon.model)
    found = {c.node.output[0]: scores_product(view, c.node)[1] for c in canon.canonical if c.pattern == "softmax"}
    return {key: mm for key, mm in found.items() if mm is not None}


def _choose_all(canon, stats: dict[str, TensorStats], budgets: dict[str, float], expanded_from: dict,
                fraction_bits: int | None = None, choices: dict | None = None,
                box_ranges: dict[str, BoxRange] | None = None, network: Network | None = None) -> _Chosen:
    """``budgets``: the error budget of every canonical node, keyed by its output name; ``choices`` a cache of
    earlier choices (the same node, budget and knobs in use choose the same); ``box_ranges``: the calibrated
    box range of every softmax over attention scores (passes/box_bound.py)."""
    choices = {} if choices is None else choices
    view = GraphView(canon.model)
    knobs = protocols.SpuKnobs()
    used: list[protocols.Protocol] = []
    plain_used: list[protocols.Protocol] = []
    rewrites, declined = [], []
    replacements, plain, op_of, names, errors, est_bytes, est_rounds = {}, {}, {}, {}, {}, {}, {}
    for entry in canon.canonical:
        node, op = entry.node, entry.pattern
        shape = view.shape(node.input[0])
        extra, measured_note = norm_parameters(op, shape, entry.attrs, [_value(view, n) for n in node.input[1:]])
        key = node.output[0]
        memo = (key, budgets[key], repr(knobs.to_json()))
        if memo not in choices:
            attrs = entry.attrs
            if op == "softmax" and scores_product(view, node)[1] is not None:
                attrs = {**attrs, QUERY_BOUND: True}     # passes/query_bounds.py will take its 2-norm bound
                if box_ranges and key in box_ranges:
                    attrs[BOX_RANGE] = box_ranges[key]
            choices[memo] = choose(op, shape, attrs, stats.get(node.input[0]), budgets[key], extra, knobs,
                                   fraction_bits, network)
        choice = choices[memo]
        direct = protocols.direct(op, **_gelu_kw(op, entry.attrs))
        cost_kw = {k: entry.attrs[k] for k in ("num_groups", "axis") if k in entry.attrs}
        before = direct.cost(shape, **cost_kw)
        plain_used.append(direct)
        op_of[key] = op
        names[key] = node.name
        plain[key] = protocols.make_node(direct, node.input, key, node.name, **_op_attrs(op, entry.attrs))
        est_bytes[key], est_rounds[key] = float(before.bytes), float(before.rounds)
        if choice.protocol is None:
            used.append(direct)
            replacements[key] = [plain[key]]
            declined.append({"pattern": op, "nodes": entry.original,
                             "reason": f"{choice.reason}; kept SPU's own expression"})
            continue
        chosen = choice.protocol
        knobs = knobs.merged(chosen.knobs)
        if is_box(chosen):
            matmul = scores_product(view, node)[1]
            key_shape = view.shape(matmul.input[1])
            replacements[key], chosen = construct(node, chosen, matmul, key_shape[-1] if key_shape else None)
        else:
            replacements[key] = [protocols.make_node(chosen, node.input, key, node.name,
                                                     **_op_attrs(op, entry.attrs))]
        used.append(chosen)
        after = chosen.cost(shape, **cost_kw)
        errors[key], est_bytes[key], est_rounds[key] = choice.error["max"], float(after.bytes), float(after.rounds)
        # A softmax that came out of an Attention op is reported as that attention.
        origin = [expanded_from[n] for n in entry.original if n in expanded_from]
        rewrites.append({
            "pattern": "attention" if origin else op, "op": op, "node": node.name,
            "nodes": origin or entry.original, "ops": ["Attention"] if origin else entry.original_ops,
            "protocol": chosen.name, "family": chosen.family, "params": chosen.params,
            "spu_knobs": chosen.knobs.to_json(), "shape": list(shape), "elements": int(np.prod(shape)),
            "interval": [float(v) for v in choice.interval], "calibrated": node.input[0] in stats,
            "budget": budgets[key], "error_max": choice.error["max"], "error_mean": choice.error["mean"],
            "est_bytes_before": float(before.bytes), "est_bytes_after": float(after.bytes),
            "est_rounds_before": float(before.rounds), "est_rounds_after": float(after.rounds),
            "curve": error_curve(chosen, op, choice.interval, entry.attrs),
            **({"measured_with": measured_note} if measured_note else {}),
            **({"note": choice.reason} if choice.reason else {}),
            **({"box_bound": _box_note(box_ranges[key], chosen),
                "prescale": f"input scale {monic_form(chosen.params['exp'])[0]:.6g} carried by the box's factor on "
                            f"the queries"} if is_box(chosen) else {}),
        })
    out = with_replacements(canon.model, replacements, used)
    return _Chosen(out, rewrites, declined, knobs, canon.model, replacements, plain, op_of, used, plain_used,
                   names, errors, est_bytes, est_rounds)


def _box_note(box, protocol) -> str:
    return (f"calibrated box range R <= {box.widest:.3g} within exp's {protocol.params['bound']:.3g}, row maxima "
            f"up to {box.slack:.3g} below the bound, exp lifted by e^{protocol.params.get('lift', 0):g}")


def _budgets_by_op(budgets: dict[str, float], op_of: dict[str, str], start: float) -> dict[str, dict]:
    """Per op class: the loosest and tightest node budget and how many nodes were tightened below ``start``."""
    out: dict[str, dict] = {}
    for key, b in budgets.items():
        entry = out.setdefault(op_of[key], {"max": b, "min": b, "nodes": 0, "tightened": 0})
        entry["max"], entry["min"] = max(entry["max"], b), min(entry["min"], b)
        entry["nodes"] += 1
        entry["tightened"] += int(b < start)
    return out


def _model_check_note(attempts, target, calibration, checking, cases: int, relaxed=None,
                      kept_attempt: int | None = None, every_case: float | None = None) -> dict:
    if not checking:
        why = ("no calibration data" if not calibration else
               "turned off (--model-error 0)" if not target else "nothing to rewrite")
        return {"target": target, "checked": False, "note": f"whole-model check not run: {why}"}
    error = attempts[-1].error if relaxed is None else relaxed.error
    met = error <= target
    relax_note = f", attempt {kept_attempt}'s budgets kept (the most accurate within the target)" \
        if kept_attempt else ""
    if relaxed is not None:
        r = relaxed.to_json()
        relax_note += (f", then {r['loosened_nodes']} node(s) loosened in {r['checks']} check(s) "
                      f"(est. {r['est_bytes_saved'] / 2**20:.1f} MiB saved)")
    every_note = ""
    if every_case is not None:
        every_note = (f"; on all {len(calibration)} calibration cases {every_case:.3g}"
                      + ("" if every_case <= target else " (above the target: more calibration cases near the "
                         "worst ones would let the check see them)"))
    return {"target": target, "checked": True, "error": error, "met": met, "cases": cases,
            **({"error_all_cases": every_case} if every_case is not None else {}),
            "attempts": [a.to_json() for a in attempts],
            **({"relax": relaxed.to_json()} if relaxed is not None else {}),
            **({"kept_attempt": kept_attempt} if kept_attempt else {}),
            "note": (f"float error of the rewritten graph vs the float model on the calibration cases: "
                     f"{error:.3g} x output std (target {target:g}) after {len(attempts)} attempt(s)"
                     + relax_note + every_note
                     + ("" if met else "; target NOT met: lower --error-budget or raise --model-error"))}


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
