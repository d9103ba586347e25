"""Which calibration cases the whole-model check runs (passes/model_check.py)."""

from __future__ import annotations

from passes.model_check import MAX_CASES, pick_indices


def test_few_cases_are_all_run():
    assert pick_indices(MAX_CASES) == list(range(MAX_CASES))
    assert pick_indices(3, [0.1, 0.5, 0.2]) == [0, 1, 2]


def test_the_worst_half_and_a_spread():
    count = 20
    errors = [0.001] * count
    errors[18], errors[13], errors[17], errors[2] = 0.012, 0.009, 0.008, 0.007   # peaks between spread cases
    picked = pick_indices(count, errors)
    assert len(picked) == MAX_CASES and picked == sorted(set(picked))
    assert {18, 13, 17, 2} <= set(picked)
    assert 0 in picked and count - 1 in picked       # the spread keeps both ends
    # without errors: spread over the set, as before
    assert pick_indices(count) == [0, 3, 5, 8, 11, 14, 16, 19]
