"""What the choice bounds is taken from every calibration case, not only from the few kept whole: a norm's
variance range and a softmax's row statistics. Along a trajectory their extremes fall between the kept cases
(on the trained MNIST U-Net a GroupNorm's group variances dipped to 0.71 at steps no kept case saw; its rsqrt,
fitted to the kept cases' 0.84-1.66, then erred by 0.5 there)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from passes.calibrate import MAX_KEPT_CASES, calibrate
from passes.choose import NORM_MARGIN, interval_for, summaries_for
from runtime.protocols import softmax
from runtime.protocols.base import load_fitted

CASES = 9
ODD = 6   # not one of the kept cases


def _identity(shape):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _kept(n):
    return set(np.linspace(0, n - 1, min(n, MAX_KEPT_CASES)).round().astype(int).tolist())


def test_the_odd_case_is_not_kept():
    assert ODD not in _kept(CASES)


def test_a_norms_variance_range_covers_every_case():
    rng = np.random.default_rng(0)
    shape = [2, 4, 6, 6]
    cases = []
    for i in range(CASES):
        x = rng.standard_normal(shape)
        x = (x - x.mean(axis=(2, 3), keepdims=True)) / x.std(axis=(2, 3), keepdims=True)
        cases.append({"x": (x * (0.5 if i == ODD else 1.0)).astype(np.float32)})   # variance 0.25 there only
    attrs = {"num_groups": 2, "epsilon": 1e-5}
    without = calibrate(_identity(shape), ["x"], cases)["x"]
    assert interval_for("group_norm", without, attrs)[0] > 0.8 / NORM_MARGIN   # what the kept cases alone say
    stats = calibrate(_identity(shape), ["x"], cases, {"x": summaries_for("group_norm", attrs)})["x"]
    low, high = interval_for("group_norm", stats, attrs)
    assert low <= 0.25 / NORM_MARGIN * 1.0001 and high >= 1.0 * NORM_MARGIN


def test_a_softmax_shift_is_set_from_every_cases_rows():
    rng = np.random.default_rng(1)
    shape = [3, 16]
    cases = [{"x": rng.normal(0, 0.5, shape).astype(np.float32)} for _ in range(CASES)]
    cases[ODD]["x"][1, 3] = 4.0                    # one row with a far larger max - mean
    attrs = {"axis": -1}
    stats = calibrate(_identity(shape), ["x"], cases, {"x": summaries_for("softmax", attrs)})["x"]
    shift = next(p for p in load_fitted("softmax") if p.family == "softmax_shift" and "clip" not in p.params)
    from_kept = softmax.specialize(shift, stats.cases, -1)
    from_all = softmax.specialize(shift, stats.cases, -1, stats.summaries["softmax:axis=-1"])
    assert from_all.params["upper"] > from_kept.params["upper"]
    x = cases[ODD]["x"].astype(np.float64)
    assert from_all.params["upper"] >= float(np.max(x.max(-1) - x.mean(-1)))
    # the row summaries give the same numbers as the rows themselves
    every = [c["x"] for c in cases]
    assert softmax.calibrated_upper(every, -1) == softmax.calibrated_upper([], -1, stats.summaries["softmax:axis=-1"])
    for norm in (2, 4):
        assert np.isclose(softmax.calibrated_row_norm(every, -1, norm),
                          softmax.calibrated_row_norm([], -1, norm, stats.summaries["softmax:axis=-1"]))
