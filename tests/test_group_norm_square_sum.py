"""GroupNorm's variance from one product (the diagonal of the groups' Gram product): the same math in float64, fewer bytes under SPU with the same
accuracy against the float64 reference, and only where the group sums of squares fit the ring."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.protocols as protocols
from runtime import fxp_scale
from runtime.protocols import group_norm
from runtime.protocols.group_norm import square_sum_shift, specialize_shape
from runtime.spu_config import SecureConfig

BASE = "group_norm.fold.nt.0.01-100.m4.d2.n2"


def _base():
    return next(p for p in protocols.variants("group_norm") if p.name == BASE)


def _inputs(shape=(2, 8, 12, 12), var=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, np.sqrt(var), shape).astype(np.float32)
    return x, rng.uniform(0.5, 1.5, shape[1]).astype(np.float32), rng.normal(0, 0.5, shape[1]).astype(np.float32)


def test_shift_grows_with_the_sums_and_the_fraction_bits():
    shape = (8, 8, 28, 28)                                       # L = 1568 per group of 2 channels
    assert square_sum_shift(shape, 4, 0.5, 22) == 0              # 1568 * 0.5 * 16 = 2^13.6 < 2^(62 - 44)
    assert square_sum_shift(shape, 4, 0.5, 18) == 0
    assert square_sum_shift(shape, 4, 100.0, 22) == 4            # 1568 * 100 * 16 = 2^21.3: 3.3 bits more than 2^18
    assert square_sum_shift(shape, 4, 100.0, 18) == 0
    assert square_sum_shift(shape, 4, 1e6, 22) is None           # beyond f/2 bits: the values would be swamped
    assert square_sum_shift((64, 8, 2, 2), 4, 1.0, 18) is None   # N*G = 256 >= L = 8: the squares are cheaper
    assert square_sum_shift((8, 32, 64, 64), 8, 1.0, 18) == 0     # a Gram product of 64 rows: 64^2 outputs


def test_specialized_protocol_is_the_same_function():
    base = _base()
    special = specialize_shape(base, (2, 8, 12, 12), {"num_groups": 4}, (0.1, 2.0), 22)[-1]
    assert special.name == f"{BASE}@sq0" and special.params["square_sum"] == {"shift": 0}
    x, scale, bias = _inputs()
    np.testing.assert_allclose(special.numpy_fn(x, scale, bias, num_groups=4),
                               base.numpy_fn(x, scale, bias, num_groups=4), rtol=0, atol=1e-12)
    assert specialize_shape(base, (2, 8, 12, 12), {}, (0.1, 2.0), 22) == [base]     # LayerNorm-like: no groups


@pytest.mark.parametrize("bits,var,shift", [(22, 0.5, 0), (22, 0.5, 3), (18, 4.0, 0)])
def test_product_variance_under_spu(bits, var, shift):
    import dataclasses
    from runtime.spu_profile import profile_run

    base = _base()
    special = dataclasses.replace(base, params={**base.params, "square_sum": {"shift": shift}})
    x, scale, bias = _inputs(var=var)
    reference = group_norm.reference(x, scale, bias, 4)
    config = SecureConfig().with_runtime(fxp_fraction_bits=bits)
    results = {}
    for name, p in (("squares", base), ("product", special)):
        with fxp_scale.fraction_bits(bits):
            r = profile_run(lambda a, s, b: p.jax_fn(a, s, b, num_groups=4, epsilon=1e-5), [x, scale, bias],
                            config=config)
        results[name] = (r.total_bytes, float(np.max(np.abs(r.outputs[0] - reference))))
        assert r.total_bytes == pytest.approx(p.cost(x.shape, num_groups=4).bytes, rel=0.02)
    assert results["product"][0] < results["squares"][0]
    float_error = float(np.max(np.abs(base.numpy_fn(x, scale, bias, num_groups=4) - reference)))
    # as accurate as the per-element squares, within SPU's own rounding
    assert results["product"][1] <= max(2 * results["squares"][1], float_error + 2e-3)


@pytest.mark.parametrize("interval", [(0.07, 0.13), (0.3, 0.75), (0.9, 2.3), (0.02, 0.25)])
def test_calibrated_rsqrts_are_what_they_claim(interval):
    from runtime.protocols.families import rsqrt_eval
    from runtime.protocols.backends import NumpyBackend
    from runtime.protocols.group_norm import RSQRT_REL_CAP, calibrated_rsqrts

    specs = calibrated_rsqrts(interval)
    assert specs
    errors = []
    for spec in specs:
        p = spec["params"]
        lo, hi = p["interval"]
        assert lo <= interval[0] and hi >= interval[1] and hi / lo <= 16 and p["segments"] == 1
        x = np.geomspace(lo, hi, 20001)
        error = float(np.max(np.abs(rsqrt_eval(NumpyBackend(), p, x) * np.sqrt(x) - 1.0)))
        assert error <= max(spec["predicted_rel_error"] * 1.2, 1e-9) and error <= RSQRT_REL_CAP
        errors.append(error)
        below, above = rsqrt_eval(NumpyBackend(), p, np.array([lo / 10, hi * 10]))
        # above: clamped, the end's value; below: Newton's steps rise from the low end's guess towards the true
        # value without overshooting it
        np.testing.assert_allclose(above, hi ** -0.5, rtol=2 * error + 1e-9)
        assert lo ** -0.5 * (1 - 2 * error) <= below <= (lo / 10) ** -0.5
    assert errors == sorted(errors, reverse=True)          # each later form (more rounds) is more accurate


def test_wide_ranges_keep_the_fitted_variants():
    from runtime.protocols.group_norm import calibrated_rsqrts
    assert calibrated_rsqrts((0.01, 100.0)) == [] and calibrated_rsqrts((0.0, 1.0)) == []


def test_calibrated_rsqrt_under_spu_saves_rounds():
    from runtime.spu_profile import profile_run

    base = _base()
    forms = specialize_shape(base, (2, 8, 12, 12), {"num_groups": 4}, (0.3, 0.75), 22)
    narrow, wide = forms[-2], forms[-1]               # the most accurate narrow form, and the fitted variant
    assert "@rs" in narrow.name and "@rs" not in wide.name
    x, scale, bias = _inputs(var=0.5)
    reference = group_norm.reference(x, scale, bias, 4)
    config = SecureConfig().with_runtime(fxp_fraction_bits=22)
    runs = {}
    for p in (narrow, wide):
        with fxp_scale.fraction_bits(22):
            runs[p.name] = profile_run(lambda a, s, b: p.jax_fn(a, s, b, num_groups=4, epsilon=1e-5),
                                       [x, scale, bias], config=config)
    n, w = runs[narrow.name], runs[wide.name]
    # (summed send actions: deterministic, where the busiest party's count can move by one or two between runs)
    assert n.profile.send_actions < w.profile.send_actions
    assert float(np.max(np.abs(n.outputs[0] - reference))) <= 2e-3
