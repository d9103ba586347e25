"""Per-node protocol choice: the cheapest protocol whose error on the node's calibrated inputs meets the budget.

The error is measured on what the node really sees: the calibrated tensors themselves (softmax rows, norm
groups, activation values) plus a dense grid over the calibrated interval, so values between the recorded
ones are covered too. Without calibration the interval is a conservative one per op, and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

import runtime.protocols as protocols
from runtime.protocols.base import op_module
from passes.box_bound import BOX_RANGE, is_box
from passes.calibrate import TensorStats
from passes.network import Network

# Wide enough for any U-Net activation or attention logit we have seen; used only without calibration data.
CONSERVATIVE_INTERVALS = {
    "silu": (-20.0, 20.0), "mish": (-20.0, 20.0), "gelu": (-20.0, 20.0), "sigmoid": (-20.0, 20.0),
    "tanh": (-20.0, 20.0), "exp": (-20.0, 0.0), "softmax": (-40.0, 40.0), "reciprocal": (0.05, 100.0),
    "rsqrt": (1e-3, 100.0), "group_norm": (1e-3, 100.0), "layer_norm": (1e-3, 100.0),
}
NORMS = ("group_norm", "layer_norm")
# A calibrated range is widened by this fraction on each side: sampling along one trajectory never sees the
# exact extremes of another seed.
MARGIN = 0.10
# A norm's calibrated variances are widened by this factor each way: they swing more between trajectories than the
# values do (the trained base-4 MNIST U-Net's last GroupNorm at t = 0: 0.0114 at the least on one DDIM trajectory,
# 0.0085 on another). Below the range Newton's steps still run on the true variance (families._clamped_segments),
# so a variance a little outside costs accuracy gradually; 2.0 cost ~90 rounds more than 1.5 on the UNet2DModel
# fixtures (wider rsqrt variants) for the same held-out error on the base-4 U-Net (0.012 x std at t = 0).
NORM_MARGIN = 1.5
GRID_POINTS = 4001
MAX_SAMPLE_VALUES = 20000
# attrs key the pipeline sets on a softmax whose rows are a MatMul's (attention's scores): see _ranking_cost
QUERY_BOUND = "_query_bound"


@dataclass
class Choice:
    protocol: protocols.Protocol | None   # None: no variant meets the budget; the node keeps the direct expression
    interval: tuple[float, float]
    error: dict
    best_rejected: tuple[str, float] | None = None
    reason: str = ""  # why the node keeps SPU's own expression (protocol None), or why a protocol misses the budget


def _variances(op: str, x: np.ndarray, attrs: dict) -> np.ndarray:
    if op == "group_norm":
        return x.reshape(x.shape[0], attrs["num_groups"], -1).var(axis=2)
    axis = attrs.get("axis", -1) % x.ndim
    return x.reshape(*x.shape[:axis], -1).var(axis=-1)


def _summary_key(op: str, attrs: dict) -> str:
    return f"{op}:" + ",".join(f"{k}={attrs[k]}" for k in ("num_groups", "axis") if k in attrs)


def summaries_for(op: str, attrs: dict) -> dict:
    """What the choice reads of every calibration case, not only of the few kept whole (passes/calibrate.py):
    the variances a norm divides by and a softmax's row statistics. Along a sampling trajectory their extremes
    come between the kept cases (on the trained MNIST U-Net a GroupNorm's group variances dipped to 0.71 at
    steps no kept case saw, below a range of 0.84-1.66, and its rsqrt, fitted to that range, erred by 0.5)."""
    if op in NORMS:
        return {_summary_key(op, attrs): lambda x: _variances(op, x, attrs).reshape(-1)}
    if op == "softmax":
        axis = attrs.get("axis", -1)
        return {_summary_key(op, attrs): lambda x: op_module(op).row_summary(x, axis)}
    return {}


def _summaries(op: str, stats: TensorStats, attrs: dict) -> list[np.ndarray] | None:
    return stats.summaries.get(_summary_key(op, attrs))


def interval_for(op: str, stats: TensorStats | None, attrs: dict | None = None) -> tuple[float, float]:
    """The input range a protocol must handle; for the norms, the range of the variances they normalise by."""
    if stats is None:
        return CONSERVATIVE_INTERVALS[op]
    if op in NORMS:
        attrs = attrs or {}
        every_case = _summaries(op, stats, attrs)
        variances = np.concatenate(every_case if every_case is not None else
                                   [_variances(op, case, attrs).reshape(-1) for case in stats.cases])
        return (float(variances.min()) / NORM_MARGIN, float(variances.max()) * NORM_MARGIN)
    low, high = stats.low, stats.high
    if op == "softmax":
        # The protocol sees x - max(x) along the axis: its range is [-(spread), 0].
        spread = max(high - low, 1e-6)
        return (-spread * (1 + MARGIN), 0.0)
    width = max(high - low, 1e-6)
    return (low - MARGIN * width, high + MARGIN * width)


def op_kwargs(op: str, attrs: dict) -> dict:
    keys = {"softmax": ("axis",), "group_norm": ("num_groups", "epsilon"), "layer_norm": ("axis", "epsilon"),
            "gelu": ("approximate",)}.get(op, ())
    return {k: attrs[k] for k in keys if k in attrs}


def norm_parameters(op: str, shape: tuple, attrs: dict, extra_inputs: list) -> tuple[list, str | None]:
    """A norm's scale and bias for measuring its error. One computed at run time (a graph input, or an op's
    output: not a constant) has no value at compile time; it is measured as the identity (scale 1, bias 0), so the
    error is the normalised output's before the affine part. Returns the inputs and a note for the report when
    that happened."""
    if op not in NORMS:
        return extra_inputs, None
    if op == "group_norm":
        channels = (int(shape[1]),)
    else:
        axis = int(attrs.get("axis", -1)) % len(shape)
        channels = tuple(int(d) for d in shape[axis:])
    filled = list(extra_inputs) + [None] * (2 - len(extra_inputs))
    missing = [what for what, value in zip(("scale", "bias"), filled[:2]) if value is None]
    if not missing:
        return extra_inputs, None
    identity = [np.ones(channels) if filled[0] is None else filled[0],
                np.zeros(channels) if filled[1] is None else filled[1]]
    return identity, (f"its {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} computed at run time: "
                      "the error is measured with scale 1 and bias 0")


def _synthetic_norm_input(op: str, shape: tuple, attrs: dict, interval) -> np.ndarray:
    """A tensor of the node's shape whose groups' variances span ``interval`` (geometrically, ends included):
    without calibration the conservative range, with it the calibrated one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    if op == "group_norm":
        groups = x.reshape(shape[0], attrs["num_groups"], -1)
    else:
        axis = attrs.get("axis", -1) % len(shape)
        groups = x.reshape(*shape[:axis], -1).reshape(-1, 1, int(np.prod(shape[axis:])))
    if groups.shape[-1] > 1:   # exactly unit variance, so that each group's variance is the one asked for
        groups = (groups - groups.mean(axis=-1, keepdims=True)) / groups.std(axis=-1, keepdims=True)
    scales = np.sqrt(np.geomspace(interval[0], interval[1], groups.shape[0] * groups.shape[1]))
    groups = groups * scales.reshape(groups.shape[0], groups.shape[1], 1)
    return groups.reshape(shape)


def _sample_inputs(op: str, shape: tuple, attrs: dict, stats: TensorStats | None, interval,
                   extra_inputs: list[np.ndarray]) -> list[tuple]:
    """Input tuples to measure the error on: the calibrated tensors, and a dense grid for elementwise ops."""
    sets = []
    if op in NORMS:
        # the kept cases, and groups whose variances span the whole calibrated range (ends included)
        cases = (stats.cases if stats is not None else []) + [_synthetic_norm_input(op, shape, attrs, interval)]
        return [(case, *extra_inputs) for case in cases]
    if op == "softmax":
        if stats is None:
            return [tuple(op_module(op).samples(interval, GRID_POINTS))]
        return [(case,) for case in stats.cases]
    grid = np.linspace(interval[0], interval[1], GRID_POINTS)
    sets.append((grid,))
    if stats is not None:
        values = np.concatenate([c.reshape(-1) for c in stats.cases])
        if values.size > MAX_SAMPLE_VALUES:
            values = np.random.default_rng(0).choice(values, MAX_SAMPLE_VALUES, replace=False)
        sets.append((values,))
    return sets


def measure(protocol: protocols.Protocol, op: str, sample_sets: list[tuple], kwargs: dict,
            fraction_bits: int | None = None) -> dict:
    """Max and mean error on the samples: the float64 emulation's error, plus the deviation between SPU's
    fixed-point run and the emulation that was measured for this protocol at the program's fraction bits (SPU
    knobs such as the lower-accuracy rsqrt change results only inside SPU, where the emulation cannot see them)."""
    fixed_point = protocol.spu_deviation(fraction_bits) if hasattr(protocol, "spu_deviation") else 0.0
    worst, total, count = 0.0, 0.0, 0
    for inputs in sample_sets:
        err = protocol.error(*inputs, **kwargs)
        worst = max(worst, err["max"])
        size = int(np.size(inputs[0]))
        total += err["mean"] * size
        count += size
    return {"max": worst + fixed_point, "mean": total / max(count, 1)}


def _ranking_cost(protocol, shape, cost_kw: dict, attrs: dict, network: Network | None = None) -> float:
    """Estimated bytes (with a ``network``: seconds, passes/network.py), at what the node will cost after the passes
    that follow the choice. On attention's scores
    (``QUERY_BOUND``): a 2-norm bounded softmax has its bound moved onto the queries (passes/query_bounds.py), exp's
    input scale goes onto the queries (passes/prescale.py, or the box's factor), and a box-bounded softmax adds its
    factor per row (a reciprocal and a comparison; passes/box_bound.py: its scores replace the original product).
    The per-query and per-key products of both bounds are small against the scores and are left out, but not the
    rounds of the box's max and min over the keys."""
    extra, extra_rounds = 0.0, 0.0
    if attrs.get(QUERY_BOUND):
        from passes.prescale import input_scale
        from passes.query_bounds import movable, prebound
        if movable(protocol):
            protocol = prebound(protocol)
        if input_scale(protocol) is not None:
            protocol = dataclasses.replace(protocol, params={**protocol.params, "prescaled": True})
        if is_box(protocol):
            from runtime.protocols.cost_model import load_table
            table = load_table()
            rows = float(np.prod(shape[:-1]))
            factor = [table.native("reciprocal", None), table.primitive("compare"), table.primitive("select")]
            extra = rows * sum(b for b, _ in factor)
            # the keys' max and min: one comparison per pair, then one tree for both (box_bound.key_box)
            keys = int(shape[-1])
            extra_rounds = (sum(r for _, r in factor) + table.primitive("compare")[1] + table.primitive("select")[1]
                            + table.reduce_max((keys + 1) // 2)[1])
    cost = protocol.cost(shape, **cost_kw)
    if network is None:
        return cost.bytes + extra
    return network.seconds(cost.bytes + extra, cost.rounds + extra_rounds)


def _box_fits(protocol, attrs: dict) -> bool:
    """A box-bounded softmax applies to attention's scores whose calibrated box ranges R_i, with the margin, fit
    its exp's range (passes/box_bound.py; wider rows would be scaled down: a temperature change)."""
    box = attrs.get(BOX_RANGE)
    return box is not None and box.widest * (1 + MARGIN) <= float(protocol.params["bound"])


def _measure_box(candidate, op: str, sample_sets: list[tuple], attrs: dict, kwargs: dict,
                 fraction_bits: int | None) -> tuple:
    """(the node's form of a box-bounded softmax, its error): lifted by the calibrated slack, measured on the
    calibrated rows shifted as the box shifts them at worst (their maximum at the largest calibrated slack below 0,
    where exp's polynomial errs differently), plus the fixed-point floor of such a row: entries of
    e^-(slack - lift), each off by a few units of the last place."""
    axis, slack = attrs.get("axis", -1), attrs[BOX_RANGE].slack * (1 + MARGIN)
    form = op_module(op).lifted(candidate, slack)
    error = measure(form, op, [(op_module(op).box_rows(inputs[0], axis) - slack,) for inputs in sample_sets],
                    kwargs, fraction_bits)
    floor = 2.0 * 2.0 ** -(fraction_bits or 18) * math.exp(max(0.0, slack - form.params.get("lift", 0.0)))
    return form, {**error, "max": float(error["max"] + floor)}


def choose(op: str, shape: tuple, attrs: dict, stats: TensorStats | None, budget: float,
           extra_inputs: list[np.ndarray], knobs_in_use: protocols.SpuKnobs,
           fraction_bits: int | None = None, network: Network | None = None) -> Choice:
    """The cheapest variant (bytes; with a ``network``, estimated seconds) whose error on the node's calibrated
    inputs meets ``budget``."""
    interval = interval_for(op, stats, attrs)
    kwargs = op_kwargs(op, attrs)
    cost_kw = {k: v for k, v in kwargs.items() if k in ("num_groups", "axis")}
    sample_sets = _sample_inputs(op, shape, attrs, stats, interval, extra_inputs)
    direct = protocols.direct(op, **({"approximate": attrs.get("approximate", "none")} if op == "gelu" else {}))
    direct_cost = _ranking_cost(direct, shape, cost_kw, {}, network)
    costs = {p.name: _ranking_cost(p, shape, cost_kw, attrs, network) for p in protocols.variants(op)}
    ranked = sorted(protocols.variants(op), key=lambda p: (costs[p.name], p.name))
    closest = None   # (protocol, error) of the most accurate candidate that missed the budget
    for candidate in ranked:
        # Knob-only variants (SPU's own expression under other global settings) change every op of the program,
        # not just this node: they belong to the best-knob baseline, not to a per-node choice.
        if candidate.family == "direct":
            continue
        if costs[candidate.name] >= direct_cost:
            break  # ranked by cost: nothing further is cheaper than SPU's own expression
        if candidate.knobs and candidate.knobs.conflicts(knobs_in_use):
            continue
        if not candidate.covers(*interval):
            continue
        if is_box(candidate):
            if stats is None or not _box_fits(candidate, attrs):
                continue
            measured = [_measure_box(candidate, op, sample_sets, attrs, kwargs, fraction_bits)]
        else:
            if candidate.family == "softmax_shift":
                if stats is None:
                    continue  # its shift U is a bound on the rows' max - mean: without calibration there is none
                candidate = op_module(op).specialize(candidate, stats.cases, attrs.get("axis", -1),
                                                     _summaries(op, stats, attrs))
                if candidate is None:
                    continue  # the rows' max - mean is too large for a shift without the max
            forms = [candidate]
            if hasattr(op_module(op), "specialize_shape"):
                # this node's forms of the candidate (its shape, its calibrated range), the preferred first
                forms = op_module(op).specialize_shape(candidate, shape, attrs, interval, fraction_bits)
            measured = ((form, measure(form, op, sample_sets, kwargs, fraction_bits)) for form in forms)
        for form, error in measured:
            if error["max"] <= budget:
                return Choice(form, interval, error, _name_and_error(closest))
            if closest is None or error["max"] < closest[1]["max"]:
                closest = (form, error)
    direct_error = measure(direct, op, sample_sets, kwargs, fraction_bits)
    if closest is None:
        return Choice(None, interval, direct_error, None,
                      "no protocol is cheaper than SPU's own expression for this shape")
    best_rejected = _name_and_error(closest)
    unmet = (f"no protocol cheaper than SPU's own expression meets the error budget {budget:g} on "
             f"[{interval[0]:.4g}, {interval[1]:.4g}] (closest: {best_rejected[0]} with max error "
             f"{best_rejected[1]:.3g})")
    if closest[1]["max"] < direct_error["max"]:
        # SPU's own expression would cost more and be less accurate: the closest protocol is the better miss.
        return Choice(closest[0], interval, closest[1], best_rejected,
                      f"{unmet}; SPU's own expression errs more ({direct_error['max']:.3g}), so the closest is used")
    return Choice(None, interval, direct_error, best_rejected, unmet)


def _name_and_error(closest) -> tuple[str, float] | None:
    return None if closest is None else (closest[0].name, closest[1]["max"])


def error_curve(protocol: protocols.Protocol, op: str, interval, attrs: dict, points: int = 96) -> list[list[float]]:
    """|protocol - reference| over the interval, for the report's plots (elementwise ops only)."""
    if op == "softmax" or op in NORMS:
        return []
    xs = np.linspace(interval[0], interval[1], points)
    kwargs = op_kwargs(op, attrs)
    ref_kw = dict(kwargs)
    run_kw = {k: v for k, v in kwargs.items() if k != "approximate"}
    errors = np.abs(protocol.numpy_fn(xs, **run_kw) - protocol.reference(xs, **ref_kw))
    return [[float(x), float(e)] for x, e in zip(xs, errors)]
