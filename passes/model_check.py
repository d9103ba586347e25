"""Whole-model accuracy check: the rewritten graph against the float model, on the calibration inputs.

Per-node budgets do not bound the output error: a small systematic error in every SiLU adds up through the
convolutions after it (on the CipherDM MNIST U-Net, SiLUs each within 5e-3 give an output error of 8% of the
output's std). So after choosing, the pipeline runs the rewritten graph in onnxruntime (every protocol node has
its exact plaintext semantics as a function body) and compares it with the float model on the calibration cases.
While the error exceeds the target, each rewritten node's own share is measured (the model with only that node
rewritten), and the nodes with the largest shares get a tighter budget (divided by TIGHTEN, and below their current
protocol's error); the report keeps every attempt. Sensitivity differs a lot between nodes (on the MNIST U-Net the
SiLUs of the last up block and the output weigh 2-4x the others), so most nodes keep the cheap protocol. The
steps are discrete and overshoot; passes/relax.py then loosens what the target does not need.

The error is ``max |rewritten - float| / std(float)`` per output and case, the largest over all: the measure the
bench reports as err/std. It is the float error of the protocols; SPU's fixed-point rounding comes on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# The default bound is a guard, not the 1e-2 benchmark target (the bench passes that): on the shipped
# trained MNIST model along a sampling trajectory, 5e-2 converges in about a minute at ~3.3 GiB per step, and its
# samples are 2.5 dB closer to plaintext than the unchecked program's (which, at 0.30 x std, already matched the
# direct-SPU baseline); 1e-2 costs many more attempts there and, with the class-level check first tried, left
# every SiLU as SPU's own expression (6.1 GB per step).
DEFAULT_MODEL_ERROR = 5e-2
TIGHTEN = 2.0
NEAR_TIGHTEN = 1.25
MAX_ATTEMPTS = 8
# Tightening stops at this fraction of the target, leaving relax (passes/relax.py) room to give the slack back
# where it saves the most bytes: stopping just under the target (0.00965 for 0.01 on the MNIST U-Net) left relax
# nothing to loosen, and the budgets where the tightening steps happened to land.
GOAL = 0.8
MIN_BUDGET = 1e-5
# at most this many calibration cases are run per check: half where the first choice errs most (on a diffusion
# trajectory the error grows towards t = 0 and peaks at one or two steps: the trained base-4 MNIST U-Net's worst,
# t = 53, 0.012 x std, fell between eight evenly spread cases), the rest spread over the set
MAX_CASES = 8
# the per-node share of the error is measured on fewer cases (one run per rewritten node)
SOLO_CASES = 1
REPORTED_NODES = 10


def pick_cases(cases: list[dict]) -> list[dict]:
    return [cases[i] for i in pick_indices(len(cases))]


def pick_indices(count: int, errors: list[float] | None = None) -> list[int]:
    """Which of ``count`` cases a check runs: all of up to MAX_CASES; else, given ``errors`` (per case, of a first
    choice run on every case), the MAX_CASES // 2 worst and the rest spread over the set; without, spread."""
    if count <= MAX_CASES:
        return list(range(count))
    keep: list[int] = []
    if errors is not None:
        keep = sorted(range(count), key=lambda i: -errors[i])[:MAX_CASES // 2]
    spreads = (np.linspace(0, count - 1, MAX_CASES - len(keep)), np.linspace(0, count - 1, MAX_CASES))
    for i in [int(v) for spread in spreads for v in spread.round()]:
        if len(keep) >= MAX_CASES:
            break
        if i not in keep:
            keep.append(i)
    return sorted(keep)


def _session(model: onnx.ModelProto):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, cases: list[dict]) -> list[list[np.ndarray]]:
    session = _session(model)
    names = {i.name for i in session.get_inputs()}
    return [[np.asarray(o, np.float64) for o in session.run(None, {k: v for k, v in case.items() if k in names})]
            for case in cases]


def case_errors(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> list[float]:
    """Per case: the largest max |got - want| / std(want) over the outputs."""
    errors = []
    for got_case, want_case in zip(outputs, reference):
        worst = 0.0
        for got, want in zip(got_case, want_case):
            std = float(np.std(want)) or 1.0
            worst = max(worst, float(np.max(np.abs(got - want))) / std)
        errors.append(worst)
    return errors


def relative_error(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    return max(case_errors(outputs, reference), default=0.0)


def worst_cases(errors: list[float]) -> list[int]:
    """The SOLO_CASES cases with the largest joint error: where the single-node shares are measured (on a
    trajectory the error peaks at some timesteps; a share measured elsewhere would point at the wrong nodes)."""
    return sorted(range(len(errors)), key=lambda i: -errors[i])[:SOLO_CASES]


@dataclass
class Attempt:
    error: float
    tightened: int              # nodes whose budget is below the starting one
    worst: list[dict]           # the nodes with the largest error of their own (empty when within target)

    def to_json(self) -> dict:
        return {"error": self.error, "tightened_nodes": self.tightened, "worst_nodes": list(self.worst)}


def tightened(budgets: dict[str, float], solo: dict[str, float], target: float,
              chosen_error: dict[str, float], error: float | None = None) -> dict[str, float]:
    """Tighten the nodes with the largest error of their own, largest first, until the others' errors add up to at
    most half the target (always at least one node): their budget is divided by TIGHTEN and kept below the error
    of their current protocol, so that the choice changes. Errors of single nodes add up to more than the joint
    error (they partly cancel), so the sum is a conservative guide. (Scaling a node's budget by target / joint
    error in one step overshoots: on the MNIST U-Net at 1e-2 it ends at 0.0009 x std and 2155 MiB, halving at
    0.0092 and 1636 MiB.) Close to the target (``error`` below TIGHTEN x target) the budgets shrink by
    error / target only, at least by NEAR_TIGHTEN: halving there overshot to 0.006 x std for a 0.0105 miss.)"""
    order = sorted(solo, key=lambda k: -solo[k])
    rest = sum(solo.values())
    picked = []
    for key in order:
        if picked and rest <= target / 2:
            break
        picked.append(key)
        rest -= solo[key]
    factor = TIGHTEN if error is None else min(TIGHTEN, max(NEAR_TIGHTEN, error / target))
    out = dict(budgets)
    for key in picked:
        out[key] = max(min(budgets[key] / factor, chosen_error.get(key, budgets[key]) * 0.9), MIN_BUDGET)
    return out


def validate(original: onnx.ModelProto, rewritten: onnx.ModelProto, cases: list[dict], target: float | None,
             source: str | None = None) -> dict:
    """The final rewritten graph's float error on inputs the choice never saw (the check tunes the budgets on the
    calibration cases, so its error there is in-sample). Nothing is changed by it: it says how the target holds
    out of sample. Per case, like the check: max |rewritten - float| / std(float)."""
    errors = case_errors(run(rewritten, cases), run(original, cases))
    worst = max(range(len(errors)), key=lambda i: errors[i])
    return {"source": source, "cases": len(cases), "error": errors[worst], "worst_case": worst,
            "per_case": errors, **({"met": errors[worst] <= target} if target else {})}
