"""runtime.spu_profile: parsing SPU's profile log (also when parties' lines interleave) and in-process runs."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.spu_profile import Profile, group_executions, parse_log, profile_run

_PREFIX = "2026-01-01 00:00:00.000 [info] [api.cc:printProfilingData:223] "


def _block(name: str, ops: dict[str, list[tuple]], link: tuple) -> list[str]:
    lines = [_PREFIX + f"[Profiling] SPU execution {name} completed, input processing took 1e-06s, execution took "
             "0.5s, output processing took 1e-06s, total time 0.5s."]
    for layer in ("HLO", "HAL", "MPC"):
        lines.append(_PREFIX + f"{layer} profiling: total time 0.4")
        for op, (count, sb, sa) in ops[layer]:
            lines.append(_PREFIX + f"- {op}, executed {count} times, duration 0.1s, send bytes {sb} recv bytes {sb}, "
                         f"send actions {sa}, recv actions {sa}")
    lines.append(_PREFIX + "Link details: total send bytes {}, recv bytes {}, send actions {}, recv actions {}"
                 .format(*link))
    return lines


def _party(k: int) -> list[str]:
    ops = {"HLO": [("pphlo.exponential", (1, 100 + k, 10 + k)), ("pphlo.add", (2, 0, 0))],
           "HAL": [("f_exp", (1, 100 + k, 10 + k)), ("f_add", (2, 0, 0))],
           "MPC": [("mul_aa", (8, 60, 8)), ("trunc_a", (8, 40 + k, 2 + k))]}
    return _block("exe", ops, (100 + k, 100 + k, 10 + k, 10 + k))


def _check(profile: Profile) -> None:
    assert profile.total_bytes == 303
    assert profile.rounds == 12
    exp = profile.ops["HLO"]["pphlo.exponential"]
    assert (exp.send_bytes, exp.send_actions, exp.max_party_send_actions, exp.count) == (303, 33, 12, 1)
    assert profile.ops["HAL"]["f_exp"].send_bytes == 303
    assert profile.ops["MPC"]["trunc_a"].max_party_send_bytes == 42
    assert set(profile.ops["MPC"]) == {"mul_aa", "trunc_a"}
    assert [op.name for op in profile.top(1)] == ["pphlo.exponential"]


def test_parse_sequential_blocks():
    text = "\n".join(["unrelated line"] + _party(0) + _party(1) + _party(2))
    blocks = parse_log(text)
    assert len(blocks) == 3 and not any(b.interleaved for b in blocks)
    assert [b.link.send_bytes for b in blocks] == [100, 101, 102]
    _check(Profile.combine(blocks))


def test_parse_interleaved_blocks_keeps_sums_and_maxima():
    a, b, c = _party(0), _party(1), _party(2)
    # Round-robin merge with an offset: parties are in different layers at the same time.
    merged, streams = [], [a, [""] * 3 + b, [""] * 7 + c]
    for i in range(max(map(len, streams))):
        merged += [s[i] for s in streams if i < len(s) and s[i]]
    blocks = parse_log("\n".join(merged))
    assert len(blocks) == 3 and all(b.interleaved for b in blocks)
    [profile] = group_executions(blocks)
    _check(profile)


def test_profile_run_measures_exp():
    x = np.linspace(-4, 4, 1 << 12, dtype=np.float32)
    result = profile_run(lambda v: v + 1, [x])
    np.testing.assert_allclose(result.outputs[0], x + 1, atol=1e-4)
    assert result.total_bytes == 0  # adding a public constant needs no communication

    import jax.numpy as jnp
    result = profile_run(lambda v, w: (jnp.exp(v), v * w), [x, x], ["secret", "public"])
    # exp: (1 + x/2^8)^(2^8), 8 squarings of secret values (fixed-point error grows with the value)
    np.testing.assert_allclose(result.outputs[0], np.exp(x), rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(result.outputs[1], x * x, atol=1e-3)
    assert result.rounds >= 8
    assert result.total_bytes == sum(p.send_bytes for p in result.profile.parties) > 0
    top = result.profile.top(1)[0]
    assert top.name == "pphlo.exponential" and top.send_bytes > 0.9 * result.total_bytes
