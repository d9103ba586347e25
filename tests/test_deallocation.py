"""SPU's frees are dropped from small cipherdm programs only (compiler/deallocation.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compiler.deallocation import OPTION, SHARE_BYTES, drop_small_frees, keep_all_values, value_elements
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
    # direct keeps SPU's frees, less those of its smallest values (all of them here: test_small_frees_dropped)
    assert OPTION not in direct.config.compiler
    # the same results as the float model, with every value kept to the end
    got = run_sim(in_memory_artifact(small), small.weights, inputs, profile=False).outputs
    want = float_outputs(model, inputs)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=0.05 * max(1.0, float(np.abs(value).max())))


def test_small_frees_dropped_up_to_the_budget_and_the_program_unchanged():
    """SPU frees every value after its last use; drop_small_frees removes the frees of the smallest values, as many
    as fit the budget, and nothing else: the program computes the same."""
    import re

    from spu import api, libspu
    from runtime.spu_config import SecureConfig, runtime_config
    from runtime.spu_profile import compile_jax, run_parties

    def fn(x, y):          # values of 8, 64 and 4096 elements, each used once
        small = jnp.sum(x * x, axis=1)                     # [8]
        middle = jnp.outer(small, small)                   # [8, 8]
        large = jnp.tile(middle, (8, 8)) + y               # [64, 64]
        return jnp.sum(large * large) + jnp.sum(middle)

    rng = np.random.default_rng(0)
    args = [rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(64, 64)).astype(np.float32)]
    config = SecureConfig()
    exe, _ = compile_jax(fn, args, ["secret", "secret"], config)
    code = exe.code

    def freed(text: bytes) -> list[int]:
        sizes = []
        for m in re.finditer(r"pphlo\.free %\S+ : tensor<([^>]*)>", text.decode()):
            sizes.append(int(np.prod([int(d) for d in re.findall(r"(\d+)x", m.group(1))])))
        return sorted(sizes)

    before = freed(code)
    assert 8 in before and 64 in before and 4096 in before
    budget = (sum(s for s in before if s <= 64)) * SHARE_BYTES
    after = freed(drop_small_frees(code, budget))
    assert after == [s for s in before if s > 64]
    assert freed(drop_small_frees(code, 0)) == before
    assert drop_small_frees(code, 0) == code

    io = api.Io(3, runtime_config(config))
    shares = [io.make_shares(a, libspu.Visibility.VIS_SECRET) for a in args]
    outputs = []
    for text in (code, drop_small_frees(code, budget), drop_small_frees(code, 1 << 40)):
        stripped = libspu.Executable(exe.name, list(exe.input_names), list(exe.output_names), text)
        results, _, _ = run_parties(stripped, [[s[r] for s in shares] for r in range(3)], config, profile=False)
        outputs.append(float(np.asarray(io.reconstruct([r[0] for r in results]))))
    x, y = (a.astype(np.float64) for a in args)
    small = np.sum(x * x, axis=1)
    middle = np.outer(small, small)
    want = np.sum((np.tile(middle, (8, 8)) + y) ** 2) + np.sum(middle)
    np.testing.assert_allclose(outputs, want, rtol=1e-3)
    np.testing.assert_allclose(outputs[1:], outputs[0], rtol=1e-5)    # fixed-point rounding only
