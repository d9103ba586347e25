"""Protocols against their float64 references: over the whole fitted interval, at every breakpoint (both sides),
beyond it (exact asymptotes, no garbage far out), in the numpy emulation and the JAX implementation; ONNX
function bodies in onnxruntime; the cipherdm:: node schema and lowering; the cost model against the measured
table; and a subset under SPU's simulator (ABY3, FM64). ``-m slow`` runs every variant under SPU."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from runtime import fxp_scale
from runtime.protocols import base
from runtime.protocols.base import (OPS, all_protocols, from_onnx_attributes, function_proto, get, make_node,
                                    op_module, to_onnx_attributes)
from runtime.protocols.cost_model import COSTS_PATH

PROTOCOLS = all_protocols()
BY_FAMILY = {}
for _p in PROTOCOLS:
    BY_FAMILY.setdefault(_p.family, []).append(_p)
PIECEWISE = BY_FAMILY["abs_piecewise"]
IDS = lambda ps: [p.name for p in ps]  # noqa: E731


def _kw(p):
    return dict(getattr(op_module(p.op), "SAMPLE_KW", {}))


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_every_op_has_direct_knob_and_fitted_variants():
    for op in OPS:
        protos = base.variants(op)
        names = [p.name for p in protos]
        assert len(names) == len(set(names))
        assert any(p.family == "direct" and not p.knobs for p in protos), op
        assert any(p.family != "direct" for p in protos), op
        costs = [p.cost(base.reference_shape(op), **base.reference_kwargs(op)).bytes for p in protos]
        assert costs == sorted(costs), f"{op}: variants() is not cheapest first"
    assert any(p.knobs for p in PROTOCOLS)
    assert get("silu.direct").op == "silu"
    with pytest.raises(KeyError):
        get("silu.nonexistent")


def test_cheapest_meets_the_budget_on_the_interval():
    choice = base.cheapest("silu", 5e-3, low=-6.0, high=6.0)
    assert choice is not None
    p, err = choice
    assert err["max"] <= 5e-3 and p.covers(-6.0, 6.0)
    # a tighter budget can only cost more
    tight, _ = base.cheapest("silu", 1e-3, low=-6.0, high=6.0)
    assert tight.cost(1 << 16).bytes >= p.cost(1 << 16).bytes
    assert p.cost(1 << 16).bytes < base.direct("silu").cost(1 << 16).bytes / 2


# ---------------------------------------------------------------------------------------------------------------
# piecewise activations: interval, breakpoints, asymptotes


@pytest.mark.parametrize("p", PIECEWISE, ids=IDS(PIECEWISE))
def test_piecewise_error_over_interval(p):
    x = np.linspace(*p.interval, 40001)
    err = p.error(x)
    assert err["max"] <= p.fit["max_error"] * 1.001 + 1e-12
    assert err["max"] <= (0.025 if "c" not in p.name.split(".")[2] else 0.025)
    # everywhere (beyond the fitted range too) the error stays bounded: no blow-up
    far = np.linspace(-4 * p.params["bound"], 4 * p.params["bound"], 20001)
    assert p.error(far)["max"] <= max(p.fit["max_error_everywhere"] * 1.001, 1e-9)


@pytest.mark.parametrize("p", PIECEWISE, ids=IDS(PIECEWISE))
def test_piecewise_continuous_at_every_breakpoint(p):
    bound = p.params["bound"]
    points = [0.0, bound] + [b * bound for b in p.params["breaks"]]
    delta = 1e-7 * bound
    for b in points:
        for sign in (1.0, -1.0):
            left, right = p.numpy_fn(np.array([sign * b - delta, sign * b + delta]))
            assert abs(right - left) <= 1e-5, f"jump {right - left:.3g} at x = {sign * b}"


@pytest.mark.parametrize("p", PIECEWISE, ids=IDS(PIECEWISE))
def test_piecewise_exact_asymptotes_beyond_the_bound(p):
    bound = p.params["bound"]
    x = np.array([1.0001, 1.5, 3.0, 10.0]) * bound
    x = np.concatenate([x, -x, [1e3, -1e3]])
    got = p.numpy_fn(x)
    if p.params["form"] == "relu_minus":
        want = np.maximum(x, 0.0)
    else:
        c, level = p.params["center"], p.params["level"]
        want = np.where(x > 0, c + level, c - level)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("p", PIECEWISE, ids=IDS(PIECEWISE))
def test_piecewise_jax_matches_numpy(p):
    bound = p.params["bound"]
    x = np.concatenate([np.linspace(-1.5 * bound, 1.5 * bound, 4001), [-1e3, -50.0, 50.0, 1e3]]).astype(np.float32)
    got = np.asarray(jax.jit(p.jax_fn)(x), np.float64)
    want = p.numpy_fn(x.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-6)


def test_gelu_serves_both_flavours():
    p = get("gelu.pw.b4.s2.d3")
    x = np.linspace(-4, 4, 8001)
    assert p.error(x)["max"] < 6e-4
    assert p.error(x, approximate="tanh")["max"] < 1e-3
    assert from_onnx_attributes({"approximate": "tanh"}, op="gelu").name == "gelu.direct_tanh"


# ---------------------------------------------------------------------------------------------------------------
# exp, softmax


EXPS = BY_FAMILY["exp_square"]


@pytest.mark.parametrize("p", EXPS, ids=IDS(EXPS))
def test_exp_never_negative_exact_at_zero_zero_below_lower(p):
    lower = p.params["lower"]
    x = np.concatenate([np.linspace(-1e3, 0.0, 200001), [0.0]])
    y = p.numpy_fn(x)
    assert np.all(y >= 0.0)
    assert p.numpy_fn(np.array([0.0]))[0] == 1.0
    assert np.all(p.numpy_fn(np.linspace(-1e3, lower - 1e-9, 1001)) == 0.0)
    left, right = p.numpy_fn(np.array([lower - 1e-9, lower + 1e-9]))
    assert abs(right - left) <= 1e-6
    assert p.error(np.linspace(lower, 0.0, 40001))["max"] <= p.fit["max_error"] * 1.001
    got = np.asarray(jax.jit(p.jax_fn)(x[::50].astype(np.float32)), np.float64)
    np.testing.assert_allclose(got, y[::50], atol=2e-6)


SOFTMAXES = BY_FAMILY["softmax_max"] + BY_FAMILY["softmax_shift"]


@pytest.mark.parametrize("p", SOFTMAXES, ids=IDS(SOFTMAXES))
def test_softmax_is_a_distribution_within_its_error(p):
    mod = op_module("softmax")
    box = p.params.get("clip") == "box"
    if p.family == "softmax_max":
        (x,) = mod.samples(p.interval, 1 << 14)
    elif box:
        (x,) = mod.box_samples(p.params["bound"])
    else:
        (x,) = mod.spread_samples(p.params["upper"])
    y = p.numpy_fn(x, axis=-1)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-9)
    assert p.error(x, axis=-1)["max"] <= p.fit["max_error"] * 1.001
    # rows far outside any calibration: huge spread, constant, huge values: still distributions (a box-bounded
    # softmax gets its rows within [-B, 0] from the graph, whatever the inputs: passes/box_bound.py)
    wild = np.array([[0.0] * 63 + [1e3], [-1e3] * 63 + [0.0], [5.0] * 64, np.linspace(-500, 500, 64)])
    if box:
        wild = mod.box_rows(wild, -1) * (p.params["bound"] / np.maximum(np.ptp(wild, -1, keepdims=True),
                                                                         p.params["bound"]))
        assert np.all(wild >= -p.params["bound"])
    y = p.numpy_fn(wild, axis=-1)
    assert np.all(np.isfinite(y)) and np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-9)
    xs = x[:64].astype(np.float32)
    got = np.asarray(jax.jit(lambda a: p.jax_fn(a, axis=-1))(xs), np.float64)
    np.testing.assert_allclose(got, p.numpy_fn(xs.astype(np.float64), axis=-1), atol=1e-5)
    # any axis
    xt = np.swapaxes(x[:16], 0, 1)
    np.testing.assert_allclose(p.numpy_fn(xt, axis=0), np.swapaxes(p.numpy_fn(x[:16], axis=-1), 0, 1))


def test_shift_softmax_is_specialised_to_the_calibrated_rows():
    rng = np.random.default_rng(3)
    rows = rng.normal(0.0, 1.0, (96, 128)) * rng.uniform(0.3, 1.0, (96, 1))
    mod = op_module("softmax")
    template = get("softmax.shiftlo.u4.sq.l12.k2.d3")
    node = mod.specialize(template, [rows], -1)
    excess = float((rows.max(-1) - rows.mean(-1)).max())
    spread = float((rows.max(-1) - rows.min(-1)).max())
    assert excess <= node.params["upper"] <= excess + 0.1 * spread + mod.UPPER_STEP
    assert node.name.startswith(template.name + "@u") and node.params["exp"] == template.params["exp"]
    assert node.measured is not None and node.measured == template.measured
    # rows whose max - mean needs a U the shift cannot take (the row sum could vanish below exp's clip): refused
    assert mod.specialize(template, [rows * 3], -1) is None
    assert mod.max_upper(template) <= -template.params["exp"]["lower"] - 2
    # a node carries its specialised parameters: the compiler rebuilds it from the attributes alone
    attrs = node.to_onnx_attributes()
    again = from_onnx_attributes({**attrs, "params": attrs["params"]}, op="softmax")
    np.testing.assert_allclose(again.numpy_fn(rows, axis=-1), node.numpy_fn(rows, axis=-1))
    # max variants are left alone
    assert mod.specialize(get("softmax.max.sq.l12.k2.d3"), [rows], -1).name == "softmax.max.sq.l12.k2.d3"


def test_low_clip_softmax_stays_a_distribution_within_its_headroom():
    for p in [q for q in BY_FAMILY["softmax_shift"] if q.params.get("clip") == "low"]:
        headroom = p.fit["headroom"]
        assert headroom >= 16
        row = np.zeros((1, 64))
        row[0, 0] = p.params["upper"] + headroom   # max - mean just under U + headroom
        y = p.numpy_fn(row, axis=-1)
        assert np.all(y >= 0) and abs(y.sum() - 1) < 1e-9 and y[0, 0] == y.max()
        # what the fit promises: LOW_CLIP_ROW elements at the headroom still sum inside SPU's FM64 range at the
        # most fraction bits the compiler picks
        from passes.fixed_point import MAX_BITS
        exp = base.Protocol("exp", "exp", "exp_square", p.params["exp"])
        peak = float(exp.numpy_fn(np.array([headroom]))[0])
        mod = op_module("softmax")
        assert peak * mod.LOW_CLIP_ROW <= mod.LOW_CLIP_SUM <= 2.0 ** (63 - MAX_BITS - 1)


BOUNDED = [q for q in BY_FAMILY["softmax_shift"] if q.params.get("clip") == "bound"]


@pytest.mark.parametrize("p", BOUNDED, ids=IDS(BOUNDED))
def test_bounded_rows_keep_exps_argument_in_range_without_comparing_elements(p):
    from runtime.protocols.backends import NumpyBackend
    from runtime.protocols.families import bounded_rows
    bound, upper, lower = p.params["bound"], p.params["upper"], p.params["exp"]["lower"]
    norm = p.params.get("norm", 2)
    limit = None if norm == 2 else 2.0 ** 12   # the squares' limit at 18 fraction bits: both regimes of p = 4 occur
    assert bound + upper <= -lower and bound - upper <= p.params["headroom"]
    rng = np.random.default_rng(5)
    rows = rng.normal(0.0, 1.0, (64, 96)) * np.geomspace(0.01, 40.0, 64)[:, None]
    rows[0] = 0.0
    centered = rows - rows.mean(-1, keepdims=True)
    norms = (np.abs(centered) ** norm).sum(-1) ** (1.0 / norm)
    squares = (centered ** 2).sum(-1)
    scaled = bounded_rows(NumpyBackend(), centered, bound, -1, norm, limit)
    # (p = 4: also within the squares' limit, as the chooser requires of every calibrated row)
    inside = (norms <= bound) & (squares <= (limit or np.inf))
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(scaled[inside], centered[inside])          # calibrated rows: untouched
    # beyond: p = 2 scales by B / N, p = 4 by (B / N)^2, or by B / N_2 where the squares pass the ring's limit
    factor = (bound / norms) ** (norm / 2)
    if limit is not None:
        huge = squares > limit
        assert huge.any() and (~huge & ~inside).any()
        factor = np.where(huge, bound / np.sqrt(squares), factor)
    np.testing.assert_allclose(scaled[~inside], centered[~inside] * factor[~inside, None], rtol=1e-6)
    assert np.abs(scaled).max() <= bound * (1 + 1e-9)
    # so exp's argument x - mean - U never leaves [L, B - U]: the fitted range and its headroom
    y = p.numpy_fn(rows, axis=-1)
    assert np.all(y >= 0) and np.allclose(y.sum(-1), 1.0)
    per_row = 1 if norm == 2 else 2        # p = 4: also the 2-norm guard against the fourth powers' overflow
    assert p.cost((64, 96), axis=-1).comparisons == per_row * 64   # comparisons per row, none per element


def test_bounded_softmax_is_specialised_to_the_calibrated_row_norms():
    mod = op_module("softmax")
    template = get("softmax.shiftb.u2.sq.l16.k3.d3")
    rng = np.random.default_rng(4)
    rows = rng.normal(0.0, 0.5, (32, 196))
    node = mod.specialize(template, [rows], -1)
    norm = float(np.sqrt(((rows - rows.mean(-1, keepdims=True)) ** 2).sum(-1)).max())
    assert node is not None and node.params["bound"] >= norm * (1 + mod.MARGIN_OF_ROWS)
    assert node.params["bound"] + node.params["upper"] <= -template.params["exp"]["lower"]
    # exact on the calibrated rows: the same as the exp polynomial on x - mean - U with no scaling
    np.testing.assert_allclose(node.numpy_fn(rows, axis=-1),
                               mod.reference(rows, axis=-1), atol=template.fit["max_error"] + 1e-3)
    # rows too wide for exp's range would all be scaled down: the variant declines
    assert mod.specialize(template, [rows * 3], -1) is None


def test_four_norm_bounds_long_rows_the_two_norm_cannot():
    """Rows of 256 Gaussian logits: the 2-norm (~16 sigma) passes every bound B that leaves exp's range room for U,
    the 4-norm (~5.3 sigma) does not; the 4-norm variant is specialised to the node, the 2-norm one declines, and
    rows whose squares approach the ring's limit at the traced fraction bits make the 4-norm one decline too."""
    mod = op_module("softmax")
    rows = np.random.default_rng(6).normal(0.0, 0.8, (64, 256))
    two, four = get("softmax.shiftb.u2.sq.l12.k2.d3"), get("softmax.shiftb4.u2.sq.l12.k2.d3")
    assert mod.specialize(two, [rows], -1) is None
    with fxp_scale.fraction_bits(18):
        node = mod.specialize(four, [rows], -1)
    assert node is not None and node.params["norm"] == 4 and node.params["square_limit"] == 2.0 ** 12
    assert mod.calibrated_row_norm([rows], -1, 4) * (1 + mod.MARGIN_OF_ROWS) <= node.params["bound"]
    np.testing.assert_allclose(node.numpy_fn(rows, axis=-1), mod.reference(rows, axis=-1),
                               atol=four.fit["max_error"] + 1e-3)
    with fxp_scale.fraction_bits(22):   # S ~ 164 x 1.21 against 2^8
        assert mod.specialize(four, [rows * 1.2], -1) is None


# ---------------------------------------------------------------------------------------------------------------
# reciprocal, rsqrt, norms


NEWTON = BY_FAMILY["newton_reciprocal"] + BY_FAMILY["newton_rsqrt"]


@pytest.mark.parametrize("p", NEWTON, ids=IDS(NEWTON))
def test_newton_on_interval_and_clamped_outside(p):
    low, high = p.interval
    x = np.geomspace(low, high, 40001)
    got, want = p.numpy_fn(x), p.reference(x)
    assert np.max(np.abs(got / want - 1)) <= p.fit["max_rel_error"] * 1.001
    # segment edges: continuous
    m = p.params["segments"]
    ratio = (high / low) ** (1 / m)
    for j in range(1, m):
        t = low * ratio ** j
        a, b = p.numpy_fn(np.array([t * (1 - 1e-9), t * (1 + 1e-9)]))
        assert abs(a / b - 1) <= 2 * p.fit["max_rel_error"] + 1e-6
    # above: the clamp gives the boundary value, never divergence
    above = np.array([high * 1.5, high * 10, high * 1e3])
    np.testing.assert_allclose(p.numpy_fn(above), p.numpy_fn(np.full(3, high)))
    # below: Newton's steps run on x itself from the guess at the low end, which lies below the true value: they
    # rise towards it and never overshoot (never worse than the boundary value, better just below the range)
    below = low / np.array([1.05, 1.35, 2.0, 10.0, 1e3])
    got_below, at_low = p.numpy_fn(below), p.numpy_fn(np.full(5, low))
    assert np.all(got_below >= at_low * (1 - 1e-9)) and np.all(got_below <= p.reference(below) * (1 + 2 * p.fit[
        "max_rel_error"]))
    if p.params["newton_steps"] >= 2:
        # 26% below the range: within 2% (the clamped value was 1 - 1/sqrt(1.35) = 14% off for rsqrt, 26% for 1/x)
        assert abs(got_below[1] / p.reference(below[1]) - 1) <= 0.02
    got32 = np.asarray(jax.jit(p.jax_fn)(x[::40].astype(np.float32)), np.float64)
    np.testing.assert_allclose(got32, got[::40], rtol=1e-4)


NORMS = [p for p in PROTOCOLS if p.op in ("group_norm", "layer_norm")]


@pytest.mark.parametrize("p", NORMS, ids=IDS(NORMS))
def test_norms_match_reference(p):
    mod = op_module(p.op)
    interval = p.interval or mod.DEFAULT_INTERVAL
    inputs = mod.samples(interval, 0)
    err = p.error(*inputs, **mod.SAMPLE_KW)
    bound = p.fit.get("max_error", 1e-3 if p.family == "norm" else 0.0)
    assert err["max"] <= bound * 1.001 + 1e-9
    args = [np.asarray(a, np.float32) for a in inputs]
    got = np.asarray(jax.jit(lambda *a: p.jax_fn(*a, **mod.SAMPLE_KW))(*args), np.float64)
    np.testing.assert_allclose(got, p.numpy_fn(*inputs, **mod.SAMPLE_KW), atol=3e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# StableHLO: what SPU receives


@pytest.mark.parametrize("op", OPS)
def test_jax_programs_are_plain_stablehlo(op):
    mod = op_module(op)
    for p in base.variants(op):
        inputs = [np.asarray(a, np.float32) for a in mod.samples(p.interval or mod.DEFAULT_INTERVAL, 64)]
        text = jax.jit(lambda *a: p.jax_fn(*a, **_kw(p))).lower(*inputs).as_text()
        for banned in ("chlo.", "rng", "while", "custom_call"):
            assert banned not in text, f"{p.name}: {banned} in the StableHLO"


# ---------------------------------------------------------------------------------------------------------------
# ONNX: attribute schema, function bodies, lowering


def test_attribute_round_trip_and_checks():
    p = get("silu.pw.b8.d5")
    attrs = to_onnx_attributes(p)
    assert attrs["protocol"] == p.name and attrs["family"] == "abs_piecewise"
    assert attrs["bound"] == 8.0 and attrs["degree"] == 5 and len(attrs["coefficients"]) == 6
    q = from_onnx_attributes(attrs, op="silu")
    assert q.params == p.params and q.name == p.name
    x = np.linspace(-9, 9, 101)
    np.testing.assert_array_equal(q.numpy_fn(x), p.numpy_fn(x))
    bad = dict(attrs, coefficients=[0.0] * 6, bound=7.0)
    with pytest.raises(ValueError, match="coefficients.*bound|bound.*coefficients"):
        from_onnx_attributes(bad, op="silu")
    with pytest.raises(ValueError, match="family"):
        from_onnx_attributes(dict(attrs, family="nope"), op="silu")
    assert from_onnx_attributes({}, op="silu").name == "silu.direct"
    knobbed = get("softmax.knob.denom")
    assert from_onnx_attributes(to_onnx_attributes(knobbed), op="softmax").knobs == knobbed.knobs
    assert knobbed.knobs.conflicts(get("exp.knob.iters6").knobs) == []
    assert get("exp.knob.iters6").knobs.conflicts(get("exp.knob.iters5").knobs)


def _onnx_inputs(p):
    mod = op_module(p.op)
    inputs = mod.samples(p.interval or mod.DEFAULT_INTERVAL, 2001)
    if p.params.get("clip") == "box":
        inputs = mod.box_samples(p.params["bound"], rows=32)
    if p.op in ("silu", "mish", "gelu", "sigmoid", "tanh") and p.family == "abs_piecewise":
        bound = p.params["bound"]
        inputs = (np.concatenate([np.linspace(-1.5 * bound, 1.5 * bound, 2001), [-1e3, 1e3]]),)
    return [np.asarray(a, np.float32) for a in inputs]


def _model_for(p, opset=18):
    inputs = _onnx_inputs(p)
    names = list(base.INPUT_NAMES.get(p.op, ("X",)))
    op_attrs = {}
    if p.op == "softmax":
        op_attrs = {"axis": -1}
    elif p.op == "group_norm":
        op_attrs = {"num_groups": 4, "epsilon": 1e-5}
    elif p.op == "layer_norm":
        op_attrs = {"axis": -1, "epsilon": 1e-5}
    node = make_node(p, names, "Y", name="n", **op_attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(inputs[0].shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    base.add_functions(model, [p])
    return model, dict(zip(names, inputs))


@pytest.mark.parametrize("op", OPS)
def test_onnx_function_bodies_run_in_onnxruntime(op):
    for p in base.variants(op):
        model, feeds = _model_for(p, opset=18 if op != "silu" else 20)
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, feeds)
        args = [feeds[n].astype(np.float64) for n in base.INPUT_NAMES.get(op, ("X",))]
        kw = _kw(p)
        if op == "group_norm":
            kw = {"num_groups": 4, "epsilon": 1e-5}
        if op == "softmax":
            kw = {"axis": -1}
        # knob and direct variants' bodies are the op itself; fitted ones are the protocol's own math
        want = p.reference(*args, **kw) if p.family == "direct" else p.numpy_fn(*args, **kw)
        scale = max(1.0, float(np.max(np.abs(want))))
        # float32 and float64 may put an input sitting on a segment edge on different sides
        rtol = max(1e-4, 2 * p.fit.get("max_rel_error", 0.0))
        np.testing.assert_allclose(got, want, atol=5e-5 * scale, rtol=rtol, err_msg=p.name)


def test_function_bodies_work_under_older_model_opset():
    p = get("softmax.max.sq.l16.k3.d3")
    model, feeds = _model_for(p, opset=17)
    onnx.checker.check_model(model, full_check=True)
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got, p.numpy_fn(feeds["X"].astype(np.float64), axis=-1), atol=1e-5)


def test_compiler_lowers_protocol_and_canonical_nodes():
    from compiler import load_model, lower
    silu = get("silu.pw.b8.d5")
    soft = get("softmax.max.sq.l16.k3.d3")
    gn = get("group_norm.fold.nt.0.01-100.m4.d2.n2")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        make_node(gn, ["c", "gamma", "beta"], "g", name="gn", num_groups=2, epsilon=1e-5),
        make_node(silu, ["g"], "s", name="silu"),
        helper.make_node("SiLU", ["g"], ["s2"], name="canonical_silu", domain="cipherdm"),
        helper.make_node("Reshape", ["s", "shape"], ["r"]),
        make_node(soft, ["r"], "y", name="softmax", axis=-1),
    ]
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "gamma"),
             onnx.numpy_helper.from_array(rng.normal(0, 0.2, 4).astype(np.float32), "beta"),
             onnx.numpy_helper.from_array(np.array([4, 36], np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 36]),
                               helper.make_tensor_value_info("s2", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    base.add_functions(model, [gn, silu, soft, base.direct("silu")])
    # the canonical node has no overload: give its body the default name
    model.functions.append(function_proto(base.direct("silu"), 18, overload=""))
    x = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)
    want_y, want_s2 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    lowered = lower(load_model(model))
    out = lowered({"x": x})
    np.testing.assert_allclose(out["y"], want_y, atol=2e-5)
    np.testing.assert_allclose(out["s2"], want_s2, atol=2e-5)


def test_lowering_refuses_inconsistent_nodes():
    from compiler.errors import LoweringError
    from compiler.interpreter import NodeContext
    from compiler.registry import lookup
    p = get("silu.pw.b8.d5")
    node = make_node(p, ["x"], "y", name="bad")
    for a in node.attribute:
        if a.name == "bound":
            a.f = 3.0
    ctx = NodeContext(node, [jnp.zeros(4)], 1)
    with pytest.raises(LoweringError, match="bound"):
        lookup("cipherdm", "SiLU", 1).fn(ctx)
    gn = make_node(base.direct("group_norm"), ["x", "s", "b"], "y", name="gn", num_groups=3)
    ctx = NodeContext(gn, [jnp.zeros((1, 4, 2, 2)), jnp.ones(4), jnp.zeros(4)], 1)
    with pytest.raises(LoweringError, match="groups"):
        lookup("cipherdm", "GroupNorm", 1).fn(ctx)


# ---------------------------------------------------------------------------------------------------------------
# cost model vs SPU's own profile


def _measured():
    return json.loads(COSTS_PATH.read_text())


def test_cost_model_predicts_every_measured_variant_within_15_percent():
    data = _measured()
    measured = {m["protocol"]: m for m in data["measurements"]}
    missing = [p.name for p in PROTOCOLS if p.name not in measured]
    assert not missing, f"variants never measured (run python -m tools.measure_protocols): {missing}"
    worst = []
    for p in PROTOCOLS:
        m = measured[p.name]
        kw = {"num_groups": 32} if p.op == "group_norm" else {}
        predicted = p.cost(tuple(m["shape"]), **kw).bytes
        dev = abs(predicted - m["bytes"]) / m["bytes"]
        worst.append((dev, p.name))
    worst.sort(reverse=True)
    assert worst[0][0] <= 0.15, worst[:5]


def test_cost_scales_with_elements_and_counts_comparisons():
    p = get("silu.pw.b8.d5")
    small, big = p.cost(1 << 10), p.cost(1 << 16)
    assert big.bytes == pytest.approx(64 * small.bytes)
    assert big.rounds == small.rounds
    assert p.comparisons_per_element() == 2.0
    assert get("silu.pw.b10.s2.d4").comparisons_per_element() == 3.0
    # one reciprocal per row: a longer row is cheaper per element
    s = get("softmax.max.sq.l16.k3.d3")
    assert s.cost((64, 1024)).bytes < s.cost((1024, 64)).bytes
    d = base.direct("softmax")
    assert d.cost((256, 256)).bytes > 2.5 * s.cost((256, 256)).bytes


# ---------------------------------------------------------------------------------------------------------------
# under SPU (ABY3, FM64): a fast subset; every variant with -m slow


SPU_SUBSET = ["silu.pw.b8.d5", "gelu.pw.b4.s2.d3", "mish.pw.b8.s2.d3", "sigmoid.pw.b8.d5", "tanh.pw.b4.d6",
              "exp.sq.l16.k3.d3", "softmax.max.sq.l12.k2.d3", "softmax.shift.u4.sq.l16.k3.d3",
              "softmax.shiftb.u2.sq.l12.k2.d3", "softmax.shiftb4.u2.sq.l12.k2.d3", "softmax.box.sq.l64.k6.d3.r12",
              "reciprocal.nt.0.1-10.m2.d2.n3", "rsqrt.nt.0.01-100.m4.d2.n2", "group_norm.fold.nt.0.01-100.m4.d2.n2",
              "layer_norm.rows.nt.0.01-100.m4.d2.n2"]
FXP_TOL = 1e-3   # 18 fraction bits: rounding of the powers, truncation errors


@pytest.fixture(scope="module")
def simulator():
    import spu.libspu as libspu
    from spu.utils.simulation import Simulator
    return Simulator.simple(3, libspu.ProtocolKind.ABY3, libspu.FieldType.FM64)


def _spu_inputs(p, n):
    mod = op_module(p.op)
    if p.family == "abs_piecewise":
        bound = p.params["bound"]
        return [np.concatenate([np.linspace(*p.interval, n - 6), [-1.5 * bound, 1.5 * bound, -50.0, 50.0,
                                                                  -1e3, 1e3]])]
    if p.params.get("clip") == "box":
        return [mod.box_samples(p.params["bound"], rows=n // 64)[0]]
    if p.family == "softmax_shift":
        return [mod.spread_samples(p.params["upper"], rows=n // 64)[0]]
    if p.op == "softmax":
        return [mod.samples(p.interval, n)[0]]
    return list(mod.samples(p.interval or mod.DEFAULT_INTERVAL, n))


def _check_under_spu(simulator, p, n=4096):
    from spu.utils.simulation import sim_jax
    kw = _kw(p)
    if p.op == "softmax":
        kw = {"axis": -1}
    inputs = _spu_inputs(p, n)
    fn = sim_jax(simulator, lambda *a: p.jax_fn(*a, **kw))
    # traced like every program: under the fraction bits it runs with (Simulator.simple: SPU's default 18)
    with fxp_scale.fraction_bits(18):
        got = np.asarray(fn(*[np.asarray(a, np.float32) for a in inputs]), np.float64)
    want = p.reference(*inputs, **kw)
    bound = p.fit.get("max_error", 0.0)
    if p.op in ("reciprocal", "rsqrt"):
        err = np.max(np.abs(got / want - 1))
        bound = p.fit.get("max_rel_error", 0.0)
    else:
        err = np.max(np.abs(got - want))
    # fixed-point rounding grows with the magnitude of what is multiplied (norms: outputs of several units; a
    # group of variance 0.01 loses ~1e-3 relative in the squares, SPU's own lowering as much)
    tol = 2 * FXP_TOL * max(1.0, float(np.max(np.abs(want)))) if p.op in ("group_norm", "layer_norm") else FXP_TOL
    # inputs near the low end of a wide rsqrt/reciprocal range have few fraction bits (2^-18 / low relative)
    floor = 2 * p.fit.get("fixed_point_rel_floor", 0.0)
    tol += floor * (max(1.0, float(np.max(np.abs(want)))) if p.op in ("group_norm", "layer_norm") else 1.0)
    assert err <= max(2 * bound, bound + tol), f"{p.name}: error {err:.3g} under SPU, fit {bound:.3g}"
    if p.family == "abs_piecewise":
        far = np.asarray(inputs[0][-6:], np.float64)
        np.testing.assert_allclose(got[-6:], p.numpy_fn(far), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("name", SPU_SUBSET)
def test_under_spu_simulator(simulator, name):
    _check_under_spu(simulator, get(name), n=2048)


def test_bounded_rows_under_spu_scale_wide_rows_and_leave_the_others(simulator):
    """The per-row path (comparison, SPU's rsqrt, select) under SPU: rows inside B come out as the emulation says
    (no scaling), rows beyond it are scaled down as emulated, and rows whose sum of squares is past the range of
    SPU's rsqrt (it gives 0 from 2^17 on at 18 fraction bits) come out uniform: still distributions."""
    from spu.utils.simulation import sim_jax
    p = get("softmax.shiftb.u2.sq.l12.k2.d3")
    rng = np.random.default_rng(8)
    rows = rng.normal(0.0, 1.0, (32, 64)) * np.geomspace(0.05, 60.0, 32)[:, None]
    norms = np.sqrt(((rows - rows.mean(-1, keepdims=True)) ** 2).sum(-1))
    assert (norms < p.params["bound"]).sum() >= 8 and (norms > 10 * p.params["bound"]).sum() >= 4
    fn = sim_jax(simulator, lambda a: p.jax_fn(a, axis=-1))
    with fxp_scale.fraction_bits(18):
        got = np.asarray(fn(rows.astype(np.float32)), np.float64)
    want = p.numpy_fn(rows, axis=-1)
    assert np.all(got >= -1e-4) and np.allclose(got.sum(-1), 1.0, atol=5e-3)
    past = norms ** 2 >= 2.0 ** 17
    assert 1 <= past.sum() <= 4
    np.testing.assert_allclose(got[~past], want[~past], atol=3e-3)
    np.testing.assert_allclose(got[past], 1.0 / rows.shape[1], atol=1e-3)


def test_four_norm_rows_under_spu_match_the_emulation_inside_beyond_and_past_the_ring_limit(simulator):
    """The 4-norm's per-row path under SPU: rows inside B untouched, rows beyond scaled by (B / N_4)^2, rows whose
    squares pass the fourth powers' limit scaled by B / N_2 instead (their fourth powers would wrap around in
    the ring): every row as emulated, every row a distribution."""
    from spu.utils.simulation import sim_jax
    p = get("softmax.shiftb4.u2.sq.l12.k2.d3")
    p = dataclasses.replace(p, params={**p.params, "square_limit": 2.0 ** 12})   # 18 fraction bits
    rng = np.random.default_rng(9)
    rows = rng.normal(0.0, 1.0, (32, 64)) * np.geomspace(0.05, 30.0, 32)[:, None]
    centered = rows - rows.mean(-1, keepdims=True)
    norms4 = ((centered ** 4).sum(-1)) ** 0.25
    squares = (centered ** 2).sum(-1)
    bound = p.params["bound"]
    assert (norms4 < bound).sum() >= 8 and ((norms4 > bound) & (squares < 2.0 ** 12)).sum() >= 4
    assert (squares > 2.0 ** 12).sum() >= 4 and (squares < 2.0 ** 17).all()
    fn = sim_jax(simulator, lambda a: p.jax_fn(a, axis=-1))
    with fxp_scale.fraction_bits(18):
        got = np.asarray(fn(rows.astype(np.float32)), np.float64)
    want = p.numpy_fn(rows, axis=-1)
    assert np.all(got >= -1e-4) and np.allclose(got.sum(-1), 1.0, atol=5e-3)
    np.testing.assert_allclose(got, want, atol=3e-3)


@pytest.mark.slow
@pytest.mark.parametrize("p", [p for p in PROTOCOLS if p.family != "direct"],
                         ids=IDS([p for p in PROTOCOLS if p.family != "direct"]))
def test_every_variant_under_spu(simulator, p):
    _check_under_spu(simulator, p, n=1 << 14)


@pytest.mark.parametrize("fixture", ["unet2d_attn.ts17", "dit_block.dynamo23"])
def test_rewritten_fixture_runs_in_onnxruntime_and_lowers_the_same(fixture):
    """Every canonical node of a real export replaced by a protocol node: the graph stays valid ONNX, its
    function bodies run in onnxruntime, and the compiler's lowering computes the same thing."""
    from compiler import load_model, lower
    from passes.canonicalize import canonicalize
    from tests.conftest import FIXTURES
    path = FIXTURES / f"{fixture}.onnx"
    if not path.exists():
        pytest.skip(f"fixture {fixture} not present")
    original = load_model(path)
    data = np.load(FIXTURES / f"{fixture}.npz")
    feeds = {i.name: data[i.name] for i in original.graph.input if i.name in data.files}
    model = canonicalize(original).model
    choice = {"SiLU": "silu.pw.b10.s2.d4", "GELU": "gelu.pw.b4.s2.d3", "Mish": "mish.pw.b10.s2.d4",
              "SoftMax": "softmax.max.sq.l16.k3.d3", "GroupNorm": "group_norm.fold.nt.0.001-1000.m6.d3.n3",
              "LayerNorm": "layer_norm.rows.nt.0.001-1000.m6.d3.n3", "Sigmoid": "sigmoid.pw.b8.d7",
              "Tanh": "tanh.pw.b4.d7"}
    used = []
    for node in model.graph.node:
        if node.domain == "cipherdm" and node.op_type in choice:
            p = get(choice[node.op_type])
            node.attribute.extend(helper.make_attribute(k, v) for k, v in to_onnx_attributes(p).items())
            node.overload = p.name
            used.append(p)
    assert used
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    base.add_functions(model, used, opset)
    onnx.checker.check_model(model, full_check=True)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    want, got_ort = run(original), run(model)
    got_jax = list(lower(load_model(model))(feeds).values())
    for w, a, b in zip(want, got_ort, got_jax):
        np.testing.assert_allclose(b, a, atol=2e-5)
        assert np.max(np.abs(a - w)) <= 1e-2 * np.std(w)


def test_spu_deviation_is_taken_at_the_most_fraction_bits_measured_up_to_the_programs(monkeypatch):
    p = base.variants("silu")[0]
    measured = {"spu_vs_emulation": 3e-4, "by_fraction_bits": {"18": {"spu_vs_emulation": 3e-4},
                                                               "22": {"spu_vs_emulation": 2e-5}}}
    monkeypatch.setattr(type(p), "measured", property(lambda self: measured))
    assert p.spu_deviation(22) == 2e-5
    assert p.spu_deviation(24) == 2e-5
    assert p.spu_deviation(20) == 3e-4
    assert p.spu_deviation(None) == 3e-4
    assert p.spu_deviation(16) == 3e-4      # nothing measured that coarse: the default setting's value


def test_measurements_at_other_fraction_bits_add_accuracy_and_keep_costs():
    from tools.measure_protocols import merge_measurements
    old = [{"protocol": "a", "bytes": 100, "spu_vs_emulation": 3e-4, "spu_max_error": 4e-4,
            "by_fraction_bits": {"18": {"spu_vs_emulation": 3e-4, "spu_max_error": 4e-4}}},
           {"protocol": "gone", "bytes": 1}]
    row = {"protocol": "a", "bytes": 999, "spu_vs_emulation": 2e-5, "spu_max_error": 1e-4, "fraction_bits": 22}
    merged = merge_measurements(old, [row], {"a"})
    assert [m["protocol"] for m in merged] == ["a"]
    assert merged[0]["bytes"] == 100 and merged[0]["spu_vs_emulation"] == 3e-4
    assert merged[0]["by_fraction_bits"] == {"18": {"spu_vs_emulation": 3e-4, "spu_max_error": 4e-4},
                                             "22": {"spu_vs_emulation": 2e-5, "spu_max_error": 1e-4}}
    again = merge_measurements(merged, [{**row, "bytes": 120, "fraction_bits": 18}], {"a"})
    assert again[0]["bytes"] == 120 and again[0]["by_fraction_bits"]["22"]["spu_vs_emulation"] == 2e-5
