"""Plaintext and in-process three-party (sim) runs of compiled programs against onnxruntime.

Tolerances come from SPU's fixed point (FM64, 18 fraction bits, resolution 2^-18 ~ 3.8e-6) and its
approximations, as measured on SPU 0.9.5 (docs in /work/shared/notes): linear ops lose a few ulps per
truncation (a K-term dot product <= K * 2^-18, ~1e-4 here); the nonlinear ops dominate: tanh 4.9e-3 absolute,
sigmoid 9.7e-4, softmax 9.4e-3 on the probabilities, exp (1 + x/2^8)^(2^8) has relative error ~ x^2 / 2^9
(1% at |x| = 2.3). Each model's budget is that error propagated through what follows it (see TOLERANCES).
Plaintext runs the very StableHLO SPU compiled, so it must match onnxruntime to float32 rounding, apart from the
half unit of fixed point a rewritten program adds to its polynomial coefficients (runtime/fxp_scale.nearest).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import secure_models
from compiler.artifact import read_artifact
from tools.cli import main as cli

# (atol, rtol) of secure vs plaintext, from the error budget above.
TOLERANCES = {
    # y = tanh(.) * t with t = 3: 3 * 4.9e-3 ~ 0.015; e = exp(x), |x| < 2.5: 1.2% relative.
    "tiny": (0.02, 0.015),
    # SiLU error 2.6e-3 per activation, summed by a 36-tap conv with |w| ~ 0.3 (~0.03 worst case, ~0.005
    # typical), then * t = 2.
    "convnet": (0.03, 0.01),
    # softmax 9.4e-3 on each probability, times |v W_o| ~ 1: ~0.01 on the residual sum.
    "attention": (0.02, 0.01),
}


def assert_close(secure: np.ndarray, reference: np.ndarray, atol: float, rtol: float, what: str) -> None:
    err = np.abs(secure.astype(np.float64) - reference)
    bound = atol + rtol * np.abs(reference)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: max error {err.max():.3g} (at {worst}: secure {secure[worst]:.6g} vs "
                                  f"{reference[worst]:.6g}; allowed {bound[worst]:.3g})")


@pytest.fixture(scope="module", params=[(name, rewrites) for name in secure_models.BUILDERS
                                        for rewrites in ("direct", "cipherdm")], ids=lambda p: "-".join(p))
def compiled(request, tmp_path_factory):
    """A compiled program and the plaintext semantics it must have, from onnxruntime: the original graph for
    --direct, the rewritten graph stored in the program (protocol nodes with their function bodies) otherwise."""
    name, rewrites = request.param
    folder = tmp_path_factory.mktemp(f"{name}-{rewrites}")
    model, inputs = secure_models.BUILDERS[name](np.random.default_rng(1))
    onnx.save(model, folder / "model.onnx")
    np.savez(folder / "inputs.npz", **inputs)
    args = ["compile", str(folder / "model.onnx"), "-o", str(folder / "model.cdm")]
    for public in secure_models.PUBLIC[name]:
        args += ["--public", public]
    if rewrites == "direct":
        args.append("--direct")
    assert cli(args) == 0
    if rewrites == "direct":
        graph, feeds = model, inputs
    else:
        graph = onnx.load_from_string(read_artifact(folder / "model.cdm").onnx_graph)
        with np.load(folder / "model.weights.npz") as weights:
            feeds = {**inputs, **{k: weights[k] for k in weights.files}}
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return name, rewrites, folder, expected


def _run(folder, mode: str, tmp_path) -> tuple[dict, dict]:
    out, metrics = tmp_path / f"{mode}.npz", tmp_path / f"{mode}.json"
    assert cli(["run", str(folder / "model.cdm"), "--weights", str(folder / "model.weights.npz"), "--inputs",
                str(folder / "inputs.npz"), "-o", str(out), "--mode", mode, "--metrics", str(metrics)]) == 0
    with np.load(out) as data:
        outputs = {k: data[k] for k in data.files}
    return outputs, json.loads(metrics.read_text())


def test_plaintext_matches_onnxruntime(compiled, tmp_path):
    _, rewrites, folder, expected = compiled
    outputs, metrics = _run(folder, "plaintext", tmp_path)
    assert set(outputs) == set(expected) and metrics["mode"] == "plaintext"
    # A rewritten program hands SPU each polynomial coefficient half a unit of its fixed point (2^-23 at 22 bits)
    # above its value, since SPU truncates constants toward zero (runtime/fxp_scale.nearest); run in float, that
    # moves the exp's folded high powers by up to ~1e-4 (measured 6.4e-5 on the attention model).
    atol = 1e-5 if rewrites == "direct" else 2e-4
    for key, ref in expected.items():
        np.testing.assert_allclose(outputs[key], ref, atol=atol, rtol=1e-5, err_msg=key)


def test_sim_matches_plaintext_within_fixed_point_budget(compiled, tmp_path):
    name, _, folder, expected = compiled
    outputs, metrics = _run(folder, "sim", tmp_path)
    atol, rtol = TOLERANCES[name]
    for key, ref in expected.items():
        assert outputs[key].shape == ref.shape and outputs[key].dtype == ref.dtype
        assert_close(outputs[key], ref.astype(np.float64), atol, rtol, f"{name}:{key}")
    # Metrics come from every party's SPU profile.
    assert metrics["total_bytes"] == sum(p["send_bytes"] for p in metrics["parties"]) > 0
    assert metrics["rounds"] == max(p["send_actions"] for p in metrics["parties"]) > 0
    hlo = metrics["ops"]["HLO"]
    assert hlo and hlo == sorted(hlo, key=lambda op: -op["send_bytes"])
    # Nearly all bytes are attributed to pphlo ops (the rest is SPU's bookkeeping outside ops).
    assert sum(op["send_bytes"] for op in hlo) == pytest.approx(metrics["total_bytes"], rel=0.05)


def test_sim_recompiles_an_artifact_from_another_spu_version_and_bytes_are_stable(tmp_path):
    import zipfile
    model, inputs = secure_models.tiny(np.random.default_rng(2))
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", **inputs)
    assert cli(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cdm"), "--public", "t"]) == 0
    with zipfile.ZipFile(tmp_path / "m.cdm") as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["spu_version"] = "0.9.4"
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(tmp_path / "old.cdm", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert read_artifact(tmp_path / "old.cdm").load_executable()[1]
    totals = set()
    for program in ("m.cdm", "old.cdm"):
        assert cli(["run", str(tmp_path / program), "--weights", str(tmp_path / "m.weights.npz"), "--inputs",
                    str(tmp_path / "in.npz"), "-o", str(tmp_path / f"{program}.npz"), "--mode", "sim",
                    "--metrics", str(tmp_path / "metrics.json")]) == 0
        totals.add(json.loads((tmp_path / "metrics.json").read_text())["total_bytes"])
    assert len(totals) == 1  # the same program sends the same 3-party total every run
    a, b = np.load(tmp_path / "m.cdm.npz"), np.load(tmp_path / "old.cdm.npz")
    np.testing.assert_allclose(a["y"], b["y"], atol=0.02)


def test_sim_session_keeps_secret_values_between_runs():
    """The sampler's pattern: one step program run repeatedly on a secret state that never leaves SPU."""
    from spu import libspu

    from runtime.simulate import SimSession
    from runtime.spu_profile import compile_jax

    x0, w = np.ones(4, np.float32), np.arange(4, dtype=np.float32)
    exe, _ = compile_jax(lambda x, w, t: x * 0.5 + w * t, [x0, w, np.float32(1)], ["secret", "secret", "public"])
    exe = libspu.Executable("step", ["x", "w", "t"], ["x_next"], exe.code)
    sim = SimSession()
    sim.set_secret("x", x0)
    sim.set_secret("w", w)
    expected = x0.astype(np.float64)
    for t in (3, 2, 1):
        sim.set_public("t", np.float32(t))
        profile = sim.run(exe)
        sim.rename("x_next", "x")
        expected = expected * 0.5 + w * t
        assert profile.total_bytes > 0 and profile.rounds > 0  # the secret products are truncated
    np.testing.assert_allclose(sim.reveal(["x"])["x"], expected, atol=1e-3)
