"""runtime.fxp_scale in plain JAX (float): the same values as x * c and the mean, whatever the route. Under SPU
(where the route matters) tests/test_ops_spu.py checks the means of norms, ReduceMean and x / n."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runtime import fxp_scale


@pytest.mark.parametrize("c", [0.0, 1.0, -3.0, 1 / 16, 1 / 17, 1 / 6272, -1 / 6272, 2.0 ** -20, 1e-7])
def test_scale_is_the_product(c):
    x = np.random.default_rng(0).normal(0, 100, (3, 5)).astype(np.float32)
    got = np.asarray(jax.jit(lambda v: fxp_scale.scale(v, c))(x))
    np.testing.assert_allclose(got, x.astype(np.float64) * c, rtol=1e-6, atol=1e-30)
    assert got.shape == x.shape and got.dtype == np.float32


def test_small_constants_go_through_an_exact_power_of_two_dot():
    text = jax.jit(lambda v: fxp_scale.scale(v, 1 / 6272)).lower(np.ones((2, 3), np.float32)).as_text()
    assert "dot_general" in text
    assert "dot_general" not in jax.jit(lambda v: fxp_scale.scale(v, 0.5)).lower(np.ones(3, np.float32)).as_text()
    assert fxp_scale.truncations(0.5) == 1
    assert fxp_scale.truncations(1 / 6272) == 3      # 2^13 / 6272, then 2^-8 and 2^-5 (f unknown)
    assert fxp_scale.truncations(1 / 6272, bits=18) == 2    # 2^-13 is exact at 18 bits: one dot
    with fxp_scale.fraction_bits(18):
        assert fxp_scale.truncations(1 / 6272) == 2
        text = jax.jit(lambda v: fxp_scale.scale(v, 1 / 6272)).lower(np.ones((2, 3), np.float32)).as_text()
        assert text.count("dot_general") == 1
    with fxp_scale.fraction_bits(10):
        assert fxp_scale.truncations(1 / 6272) == 3     # 2^-10 then 2^-3


@pytest.mark.parametrize("axis", [-1, (1, 2), 0])
def test_mean_matches_numpy(axis):
    x = np.random.default_rng(1).normal(10, 0.5, (4, 6, 7)).astype(np.float32)
    got = np.asarray(jax.jit(lambda v: fxp_scale.mean(v, axis))(x))
    np.testing.assert_allclose(got, np.mean(x.astype(np.float64), axis=axis, keepdims=True), rtol=1e-6)


def test_integer_mean_falls_back_to_jnp():
    x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    assert np.asarray(fxp_scale.mean(x, 1)).tolist() == np.mean(np.arange(12).reshape(3, 4), 1, keepdims=True).tolist()


@pytest.mark.parametrize("bits", [18, 22])
def test_nearest_makes_truncation_toward_zero_round_to_nearest(bits):
    coeffs = np.random.default_rng(2).uniform(-1e-3, 1e-3, 200)
    with fxp_scale.fraction_bits(bits):
        handed = np.array([fxp_scale.nearest(float(c)) for c in coeffs])
    encoded = np.trunc(handed * 2.0 ** bits)            # what SPU does with a public constant
    np.testing.assert_array_equal(encoded, np.round(coeffs * 2.0 ** bits))
    assert fxp_scale.nearest(0.3) == 0.3                # bits unknown: unchanged


def test_polynomial_coefficients_are_encoded_to_the_nearest_under_spu():
    """exp on [-16, 0] folds 4^-i into its coefficients: c_4 / 256 is 14.8 units at 18 bits. Truncated to 14, the
    protocol erred 1.4e-3 under SPU (its float fit: 2.0e-4); encoded to the nearest, it is back near its fit."""
    import spu.libspu as libspu
    from spu.utils.simulation import Simulator, sim_jax
    from runtime.protocols.base import get

    p = get("exp.sq.l16.k2.d4")
    x = np.linspace(-16.0, 0.0, 4096).astype(np.float32)
    want = np.exp(x.astype(np.float64))
    sim = Simulator.simple(3, libspu.ProtocolKind.ABY3, libspu.FieldType.FM64)   # 18 fraction bits
    # two functions: jax caches a trace per function, and the bits change what is traced
    truncated = np.max(np.abs(np.asarray(sim_jax(sim, lambda v: p.jax_fn(v))(x), np.float64) - want))
    with fxp_scale.fraction_bits(18):
        nearest = np.max(np.abs(np.asarray(sim_jax(sim, lambda v: p.jax_fn(v))(x), np.float64) - want))
    assert nearest < 0.5 * truncated and nearest < 2 * p.fit["max_error"] + 1e-4


@pytest.mark.parametrize("axis", [-1, (0, 2), 1, (0, 1, 2)])
@pytest.mark.parametrize("keepdims", [True, False])
@pytest.mark.parametrize("weight", [1.0, 1 / 42, -3.0])
def test_weighted_sum_is_one_product_with_a_public_column(axis, keepdims, weight):
    x = np.random.default_rng(2).normal(0, 3, (3, 5, 7)).astype(np.float32)
    fn = jax.jit(lambda v: fxp_scale.weighted_sum(v, axis, keepdims, weight))
    want = weight * np.sum(x.astype(np.float64), axis=axis, keepdims=keepdims)
    got = np.asarray(fn(x))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    text = fn.lower(x).as_text()
    assert "stablehlo.reduce" not in text and "dot_general" in text   # SPU reduces by slices: slow
    # static (compile-time) tensors and integers are summed as they are
    np.testing.assert_allclose(fxp_scale.weighted_sum(x, axis, keepdims, weight), want, rtol=1e-5, atol=1e-5)
    ints = np.arange(105, dtype=np.int32).reshape(3, 5, 7)
    assert np.array_equal(np.asarray(jax.jit(lambda v: fxp_scale.weighted_sum(v, axis, keepdims))(ints)),
                          np.sum(ints, axis=axis, keepdims=keepdims))
