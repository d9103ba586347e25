"""Relax's group testing on a synthetic model whose error is a known sum of per-node contributions."""

from __future__ import annotations

import pytest

from passes import relax as relax_module
from passes.model_check import TIGHTEN
from passes.relax import MARGIN, relax

START = 1e-2


def _model(weights: dict[str, float]):
    def error(budgets):
        return sum(weights[k] * budgets[k] for k in weights)

    def bytes_of(budgets):   # looser budget, fewer bytes: 100 bytes per halving of the budget below START
        return {k: 100.0 * (START / b) for k, b in budgets.items()}
    return error, bytes_of


def test_relax_loosens_what_fits_and_keeps_the_heavy_node_tight():
    weights = {f"n{i}": 0.01 for i in range(12)} | {"heavy": 5.0}
    error, bytes_of = _model(weights)
    budgets = {k: START / TIGHTEN ** 2 for k in weights}
    target = 0.02
    start_error = error(budgets)
    assert start_error <= target
    state = relax(budgets, START, target, start_error, bytes_of, error)
    assert state.error == pytest.approx(error(state.budgets)) and state.error <= MARGIN * target
    assert all(START / TIGHTEN ** 2 <= b <= START for b in state.budgets.values())
    assert state.budgets["heavy"] == START / TIGHTEN ** 2          # loosening it alone breaks the target
    assert sum(b > START / TIGHTEN ** 2 for b in state.budgets.values()) >= 10
    assert state.checks == len(state.steps) <= relax_module.MAX_CHECKS
    for step in state.steps:
        assert step["kept"] == (step["error"] <= MARGIN * target)


def test_relax_respects_the_check_limit(monkeypatch):
    monkeypatch.setattr(relax_module, "MAX_CHECKS", 3)
    weights = {f"n{i}": 1.0 for i in range(16)}
    error, bytes_of = _model(weights)
    budgets = {k: START / TIGHTEN for k in weights}
    state = relax(budgets, START, 0.081, error(budgets), bytes_of, error)   # no loosening fits
    assert state.checks == 3 and state.budgets == budgets


def test_nothing_tightened_nothing_to_relax():
    weights = {"a": 1.0}
    error, bytes_of = _model(weights)
    state = relax({"a": START}, START, 1.0, error({"a": START}), bytes_of, error)
    assert state.checks == 0 and state.budgets == {"a": START}


def test_relax_loosens_by_the_cost_the_choice_ranks_by():
    """With --network the choice ranks by estimated seconds; relax must loosen what saves seconds, even where that
    costs bytes (a looser budget that lets a node take a wider, fewer-round variant), and report the bytes."""
    weights = {"saves_bytes": 0.5, "saves_rounds": 0.5}
    error, _ = _model(weights)

    def bytes_of(budgets):   # looser "saves_rounds" takes more bytes
        return {"saves_bytes": 100.0 * START / budgets["saves_bytes"],
                "saves_rounds": 100.0 * budgets["saves_rounds"] / START}

    def seconds_of(budgets):  # ... and fewer rounds, which is what the link pays for
        return {"saves_bytes": 0.0, "saves_rounds": START / budgets["saves_rounds"]}

    budgets = {k: START / TIGHTEN for k in weights}
    target = 0.0075 / MARGIN     # room to loosen one node, not both
    state = relax(budgets, START, target, error(budgets), seconds_of, error, bytes_of)
    assert state.budgets == {"saves_bytes": START / TIGHTEN, "saves_rounds": START}
    (step,) = [s for s in state.steps if s["kept"]]
    assert step["nodes"] == ["saves_rounds"] and step["est_bytes_saved"] == pytest.approx(-50.0)
    by_bytes = relax(budgets, START, target, error(budgets), bytes_of, error)
    assert by_bytes.budgets == {"saves_bytes": START, "saves_rounds": START / TIGHTEN}
