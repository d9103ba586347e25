"""Whole-model accuracy check: the rewritten graph against the float model, on the calibration inputs.

Per-node budgets do not bound the output error: a small systematic error in every SiLU adds up through the
convolutions after it (on the CipherDM MNIST U-Net, SiLUs each within 5e-3 give an output error of 8% of the
output's std). So after choosing, the pipeline runs the rewritten graph in onnxruntime (every protocol node has
its exact plaintext semantics as a function body) and compares it with the float model on the calibration cases.
While the error exceeds the target, the op classes that cause it are found by rewriting one class at a time, and
their per-node budget is divided by TIGHTEN; the report keeps every attempt.

The error is ``max |rewritten - float| / std(float)`` per output and case, the largest over all: the measure the
bench reports as err/std. It is the float error of the protocols; SPU's fixed-point rounding comes on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# The default bound is a guard, not the 1e-2 benchmark target (pass --model-error 0.01 for that): on the
# shipped trained MNIST model along a sampling trajectory, 1e-2 leaves no SiLU protocol within its budget (2.7e-4
# per node; 27 SiLUs stay SPU's own, 6.1 GB per step instead of 3.4), while 5e-2 costs nothing over 1e-1 there and
# samples at per-node budget 1e-2 (error 0.30) already matched the direct-SPU baseline's quality.
DEFAULT_MODEL_ERROR = 5e-2
TIGHTEN = 2.0
MAX_ATTEMPTS = 8
MIN_BUDGET = 1e-5
# at most this many calibration cases are run per check (spread over the set, like the calibration's kept cases)
MAX_CASES = 8


def pick_cases(cases: list[dict]) -> list[dict]:
    if len(cases) <= MAX_CASES:
        return list(cases)
    keep = np.linspace(0, len(cases) - 1, MAX_CASES).round().astype(int)
    return [cases[i] for i in sorted(set(keep.tolist()))]


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


def relative_error(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    worst = 0.0
    for got_case, want_case in zip(outputs, reference):
        for got, want in zip(got_case, want_case):
            std = float(np.std(want)) or 1.0
            worst = max(worst, float(np.max(np.abs(got - want))) / std)
    return worst


@dataclass
class Attempt:
    budgets: dict[str, float]
    error: float
    by_op: dict[str, float]     # the model error with only this op class rewritten (empty when within target)

    def to_json(self) -> dict:
        return {"budgets": dict(self.budgets), "error": self.error, "by_op": dict(self.by_op)}


def tightened(budgets: dict[str, float], by_op: dict[str, float], target: float,
              chosen_error: dict[str, float]) -> dict[str, float]:
    """New budgets for every op class whose own error exceeds half the target (at least the worst one): divided by
    TIGHTEN, and below the largest error among the class's current choices, so that its worst node changes."""
    worst = max(by_op, key=by_op.get)
    culprits = {op for op, err in by_op.items() if err > target / 2} | {worst}
    return {op: max(min(b / TIGHTEN, chosen_error.get(op, b) * 0.9), MIN_BUDGET) if op in culprits else b
            for op, b in budgets.items()}
