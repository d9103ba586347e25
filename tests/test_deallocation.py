"""SPU's frees are dropped from small cipherdm programs only (compiler/deallocation.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.deallocation import OPTION, SHARE_BYTES, keep_all_values, value_elements
from compiler.spu_compile import compile_model
from runtime.simulate import run_sim
from tests.secure_models import convnet
from tools.benchmark import float_outputs, in_memory_artifact


def _stablehlo(fn, *shapes) -> str:
    return jax.jit(fn).lower(*[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]).as_text()


def test_value_elements_counts_every_result_once():
    # three ops of 4 x 8 and one of 8 x 3: no constants, no arguments counted
    text = _stablehlo(lambda x, w: (jnp.transpose(x * x + x) @ w), (4, 8), (4, 3))
    assert value_elements(text) == 3 * 32 + 8 * 3
    assert value_elements(_stablehlo(lambda x: jnp.sum(x), (5, 7))) >= 1   # a scalar result counts one


def test_budget_decides():
    text = _stablehlo(lambda x: x * x, (64, 64))
    size = 64 * 64 * SHARE_BYTES
    assert keep_all_values(text, budget=size) and not keep_all_values(text, budget=size - 1)


def _code(program) -> str:
    from spu import libspu
    exe = libspu.Executable()
    exe.ParseFromString(program.executable)
    return exe.code.decode()


def test_small_cipherdm_program_runs_without_frees_and_direct_keeps_spus_defaults():
    model, inputs = convnet(np.random.default_rng(0))
    small = compile_model(model, public=["t"], rewrites="cipherdm")
    direct = compile_model(model, public=["t"], rewrites="direct")
    assert small.config.compiler.get(OPTION) is True and "pphlo.free" not in _code(small)
    assert OPTION not in direct.config.compiler and "pphlo.free" in _code(direct)
    # the same results as the float model, with every value kept to the end
    got = run_sim(in_memory_artifact(small), small.weights, inputs, profile=False).outputs
    want = float_outputs(model, inputs)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=0.05 * max(1.0, float(np.abs(value).max())))
