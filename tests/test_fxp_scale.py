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
