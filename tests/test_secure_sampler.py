"""Secure sampling (runtime/secure_sampler.py, cipherdm sample / trajectory) on a tiny conditional U-Net.

The tiny model (built here with onnx.helper) has the inputs of a diffusion U-Net: sample [B, 1, 8, 8] (secret),
timestep [B] (public, through a sinusoidal embedding of public constants), class_labels [B, 3] one-hot (secret),
and a Conv -> +embedding -> SiLU -> Conv body with a skip, so the secure program has real nonlinear MPC work.

Tolerances. The sampler update is linear in x_t, eps and the noise with public coefficients, so a secure run's
error is the U-Net's error times |b| of each step, carried on by |a| ~ 1. With T = 10 training timesteps
(alpha_bar >= 0.9) every |b| <= 0.35. SPU's own sigmoid (direct programs) is off by up to ~1e-3, summed by the
36-tap output conv (|w| ~ 0.2): ~5e-3 on eps, so ~3 * 0.35 * 5e-3 ~ 5e-3 after 3 steps; the rewritten programs'
polynomial protocols are exact to fixed-point resolution under SPU (~1e-5). We allow 0.01 (measured: 1e-3).
The rewritten graph vs the original float model adds the protocols' float error, at most the rewrite budget
(1e-2) per activation, ~0.3 * 1e-2 * 4 channels per step on eps: we allow 0.02 (measured: 7e-3).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import secure_models
from compiler.artifact import read_artifact, read_weights
from runtime import secure_sampler as ss
from tools.cli import main as cli

T_SHORT = 10          # a short training schedule keeps every step's |b| small (see the module docstring)
SECURE_ATOL = 0.01    # secure vs the same program in plaintext
REWRITE_ATOL = 0.02   # the rewritten program vs the original float model


def tiny_unet(batch: int = 2, classes: int = 3, channels: int = 4, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c = channels
    freqs = np.array([[1.0, 0.3, 0.1, 0.03]], np.float32)
    nodes = [
        h.make_node("Constant", [], ["freqs"], value=nh.from_array(freqs, "freqs_value")),
        h.make_node("Constant", [], ["axes1"], value=nh.from_array(np.array([1], np.int64), "axes_value")),
        h.make_node("Unsqueeze", ["timestep", "axes1"], ["t2"]),
        h.make_node("Mul", ["t2", "freqs"], ["targ"]),
        h.make_node("Sin", ["targ"], ["tsin"]),
        h.make_node("Cos", ["targ"], ["tcos"]),
        h.make_node("Concat", ["tsin", "tcos"], ["temb0"], axis=1),
        h.make_node("Gemm", ["temb0", "wt", "bt"], ["temb"]),
        h.make_node("Gemm", ["class_labels", "wl"], ["lemb"]),
        h.make_node("Add", ["temb", "lemb"], ["emb"]),
        h.make_node("Constant", [], ["eshape"], value=nh.from_array(np.array([batch, c, 1, 1], np.int64), "es")),
        h.make_node("Reshape", ["emb", "eshape"], ["emb4"]),
        h.make_node("Conv", ["sample", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Add", ["c1", "emb4"], ["h1"]),
        h.make_node("Sigmoid", ["h1"], ["s1"]),
        h.make_node("Mul", ["h1", "s1"], ["a1"]),
        h.make_node("Conv", ["a1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        h.make_node("Mul", ["sample", "skip"], ["sk"]),
        h.make_node("Add", ["c2", "sk"], ["eps"]),
    ]
    weights = {"wt": rng.standard_normal((8, c)) * 0.3, "bt": rng.standard_normal(c) * 0.1,
               "wl": rng.standard_normal((classes, c)) * 0.5,
               "w1": rng.standard_normal((c, 1, 3, 3)) * 0.3, "b1": rng.standard_normal(c) * 0.1,
               "w2": rng.standard_normal((1, c, 3, 3)) * 0.2, "b2": rng.standard_normal(1) * 0.05,
               "skip": np.array([0.5])}
    graph = h.make_graph(nodes, "tiny_unet", [
        h.make_tensor_value_info("sample", T.FLOAT, [batch, 1, size, size]),
        h.make_tensor_value_info("timestep", T.FLOAT, [batch]),
        h.make_tensor_value_info("class_labels", T.FLOAT, [batch, classes])],
        [h.make_tensor_value_info("eps", T.FLOAT, [batch, 1, size, size])],
        [nh.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _compile(folder, model, name, *extra) -> tuple:
    onnx.save(model, folder / f"{name}.onnx")
    program = folder / f"{name}.cdm"
    assert cli(["compile", str(folder / f"{name}.onnx"), "-o", str(program), "--public", "timestep", *extra]) == 0
    return program, folder / f"{name}.weights.npz"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, {"cipherdm": (program, weights), "direct": (...), "batch4": (...)})."""
    folder = tmp_path_factory.mktemp("tiny-unet")
    model = tiny_unet()
    programs = {"cipherdm": _compile(folder, model, "tiny"), "direct": _compile(folder, model, "tinyd", "--direct"),
                "batch4": _compile(folder, tiny_unet(batch=4), "tiny4", "--direct")}
    return folder, programs


def _prepared(program, weights_path, settings):
    artifact = read_artifact(program)
    weights = read_weights(weights_path, artifact)
    signature, layout = ss.check_request(artifact, settings)
    plan = settings.plan()
    labels = ss.parse_labels(None, settings.batch, signature.num_classes)
    user = ss.user_data(signature, settings, plan, 7, labels)
    return artifact, weights, signature, layout, user


def _secure(artifact, weights, signature, layout, user, settings, steps_per_run=1, loop="fori"):
    plan = settings.plan()
    program = ss.build_step_program(artifact, signature, layout, any(plan.needs_noise), steps_per_run, loop)
    backend = ss.SimBackend(artifact.config)
    return ss.run_secure_sampling(backend, program, signature, settings, user=user, weights=weights), backend


@pytest.mark.parametrize("rewrites,sampler,eta,guidance", [
    ("cipherdm", "ddim", None, None),     # deterministic DDIM on the rewritten program
    ("direct", "ddpm", None, 2.0),        # stochastic DDPM (noise enters every step) with guidance: two calls
    ("cipherdm", "ddim", 0.5, None),      # DDIM eta > 0
])
def test_secure_sampling_matches_plaintext(tiny, rewrites, sampler, eta, guidance):
    folder, programs = tiny
    settings = ss.SamplingSettings(sampler, 3, 2, "linear", T_SHORT, eta, guidance)
    artifact, weights, signature, layout, user = _prepared(*programs[rewrites], settings)
    assert layout == ("twice" if guidance else "none")
    run, _ = _secure(artifact, weights, signature, layout, user, settings)

    same_program = ss.run_step_plaintext(artifact, signature, settings, user, weights, layout)
    twin = ss.plaintext_sample(ss.float_eps_fn(artifact, weights, signature), signature, settings, user)
    assert run.image.shape == (2, 1, 8, 8) and np.all(np.isfinite(run.image))
    assert np.abs(run.image - same_program).max() <= SECURE_ATOL
    assert np.abs(same_program - twin).max() <= (REWRITE_ATOL if rewrites == "cipherdm" else 1e-4)
    assert np.abs(run.image - twin).max() <= SECURE_ATOL + REWRITE_ATOL
    # The run is not trivially close: the samples moved away from x_T.
    assert np.abs(twin - user.x_T).max() > 0.1
    # Per-step costs come from SPU's profile: every step does the same work.
    assert len(run.records) == 3 and len({r.total_bytes for r in run.records}) == 1
    assert all(r.total_bytes > 0 and r.rounds > 0 for r in run.records)


def test_stacked_guidance_runs_one_call_on_2b(tiny):
    """A program compiled for batch 4 samples batch 2 with guidance as one U-Net call on [label; null]."""
    folder, programs = tiny
    settings = ss.SamplingSettings("ddim", 2, 2, "linear", T_SHORT, None, 3.0)
    artifact, weights, signature, layout, user = _prepared(*programs["batch4"], settings)
    assert layout == "stacked"
    run, _ = _secure(artifact, weights, signature, layout, user, settings)
    twin = ss.plaintext_sample(ss.float_eps_fn(artifact, weights, signature), signature, settings, user)
    assert run.image.shape == (2, 1, 8, 8)
    assert np.abs(run.image - twin).max() <= SECURE_ATOL


def test_x_t_is_never_reconstructed(tiny, monkeypatch):
    """Every reconstruction in the simulation goes through Io.reconstruct: it happens once, for x_0, after the
    last step; between steps the parties only run the program and rename their own shares."""
    from spu import api

    from runtime.simulate import SimSession

    folder, programs = tiny
    events = []
    reconstruct, run, reveal = api.Io.reconstruct, SimSession.run, SimSession.reveal
    monkeypatch.setattr(api.Io, "reconstruct", lambda self, shares: events.append("reconstruct")
                        or reconstruct(self, shares))
    monkeypatch.setattr(SimSession, "run", lambda self, exe: events.append("run") or run(self, exe))
    monkeypatch.setattr(SimSession, "reveal", lambda self, names: events.append(("reveal", tuple(names)))
                        or reveal(self, names))
    settings = ss.SamplingSettings("ddpm", 4, 2, "linear", T_SHORT)
    artifact, weights, signature, layout, user = _prepared(*programs["direct"], settings)
    result, backend = _secure(artifact, weights, signature, layout, user, settings)
    assert events == ["run"] * 4 + [("reveal", (ss.STATE,)), "reconstruct"]
    assert result.revealed == [ss.STATE]


def test_multistep_program_equals_state_kept_in_the_runtime(tiny):
    folder, programs = tiny
    settings = ss.SamplingSettings("ddpm", 4, 2, "linear", T_SHORT)
    args = _prepared(*programs["direct"], settings)
    one, _ = _secure(*args, settings)
    fori, _ = _secure(*args, settings, steps_per_run=2, loop="fori")
    assert len(one.records) == 4 and len(fori.records) == 2
    np.testing.assert_allclose(fori.image, one.image, atol=2e-3)
    # Same protocol work either way: the bytes of two single steps equal one two-step run's (up to SPU's
    # loop bookkeeping).
    assert abs(sum(r.total_bytes for r in one.records[:2]) - fori.records[0].total_bytes) <= \
        0.02 * fori.records[0].total_bytes


def test_sample_cli_sim_writes_grid_and_metrics(tiny, tmp_path):
    folder, programs = tiny
    program, weights = programs["cipherdm"]
    grid, metrics = tmp_path / "grid.png", tmp_path / "m.json"
    assert cli(["sample", str(program), "--weights", str(weights), "--mode", "sim", "--steps", "2",
                "--train-timesteps", str(T_SHORT), "--label", "2,1", "--seed", "3", "-o", str(grid),
                "--metrics", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert grid.stat().st_size > 0
    assert m["labels"] == [2, 1] and m["rewrites"] == "cipherdm" and m["revealed"] == [ss.STATE]
    assert [s["t"] for s in m["per_step"]] == [[9], [0]]
    assert m["totals"]["total_bytes"] == sum(s["total_bytes"] for s in m["per_step"]) > 0
    assert m["totals"]["rounds"] == sum(s["rounds"] for s in m["per_step"]) > 0
    assert len(m["quality"]["psnr_db"]) == 2 and m["quality"]["mean_ssim"] is not None
    assert "before the MPC rewrites" in m["plaintext_twin"]


def test_sample_cli_on_a_colour_unet_writes_an_rgb_grid(tmp_path):
    # diffusers' UNet2DModel fixture: three channels, no class labels; the grid is drawn in colour and the metrics
    # count every channel (a grey-only grid writer once failed here after the whole sampling run)
    from pathlib import Path

    from PIL import Image

    fixture = Path(__file__).resolve().parent / "fixtures" / "unet2d_attn.ts17.onnx"
    program = tmp_path / "rgb.cdm"
    assert cli(["compile", str(fixture), "-o", str(program), "--public", "timestep", "--direct"]) == 0
    grid, metrics, samples = tmp_path / "grid.png", tmp_path / "m.json", tmp_path / "x0.npz"
    assert cli(["sample", str(program), "--weights", str(tmp_path / "rgb.weights.npz"), "--mode", "plaintext",
                "--steps", "2", "--label", "none", "-o", str(grid), "--metrics", str(metrics),
                "--save-samples", str(samples)]) == 0
    img = np.asarray(Image.open(grid))
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 2 * 8 * 3
    m = json.loads(metrics.read_text())
    assert len(m["quality"]["psnr_db"]) == 2 and "3x8x8" in m["quality"]["agreement_note"]
    with np.load(samples) as data:
        assert data["x0"].shape == (2, 3, 8, 8)


@pytest.fixture(scope="module")
def text_conditioned(tmp_path_factory):
    """diffusers' UNet2DConditionModel fixture (encoder_hidden_states [2, 4, 16]) compiled as it is."""
    from pathlib import Path
    folder = tmp_path_factory.mktemp("cond-unet")
    fixture = Path(__file__).resolve().parent / "fixtures" / "unet2d_cond.ts17.onnx"
    program = folder / "cond.cdm"
    assert cli(["compile", str(fixture), "-o", str(program), "--public", "timestep", "--direct"]) == 0
    return folder, program, folder / "cond.weights.npz"


def _sample_x0(program, weights, folder, name, mode, *extra):
    out = folder / f"{name}.npz"
    assert cli(["sample", str(program), "--weights", str(weights), "--mode", mode, "--steps", "2",
                "--train-timesteps", str(T_SHORT), "-o", str(folder / f"{name}.png"), "--save-samples", str(out),
                *extra]) == 0
    with np.load(out) as data:
        return data["x0"], data["x0_plaintext"]


def test_the_users_text_embedding_conditions_the_samples(text_conditioned):
    folder, program, weights = text_conditioned
    rng = np.random.default_rng(11)
    one = rng.standard_normal((4, 16)).astype(np.float32)           # the same prompt for both images
    np.save(folder / "one.npy", one)
    np.savez(folder / "both.npz", encoder_hidden_states=np.stack([one, one]))
    x_one, twin_one = _sample_x0(program, weights, folder, "one", "plaintext", "--condition", str(folder / "one.npy"))
    x_both, _ = _sample_x0(program, weights, folder, "both", "plaintext", "--condition", str(folder / "both.npz"))
    x_none, _ = _sample_x0(program, weights, folder, "none", "plaintext")
    np.testing.assert_allclose(x_one, x_both, rtol=0, atol=1e-6)
    np.testing.assert_allclose(x_one, twin_one, rtol=0, atol=1e-4)   # the twin got the same embedding
    assert np.max(np.abs(x_one - x_none)) > 1e-2                      # and it is not the null condition
    # under MPC: the embedding is secret-shared like the noise and gives the same samples
    x_sim, twin_sim = _sample_x0(program, weights, folder, "sim", "sim", "--condition", str(folder / "one.npy"))
    np.testing.assert_allclose(twin_sim, twin_one, rtol=0, atol=1e-6)
    assert np.max(np.abs(x_sim - twin_sim)) < 0.05 * max(1.0, float(np.max(np.abs(twin_sim))))


def test_guidance_takes_the_users_null_embedding(text_conditioned, tmp_path, capsys):
    # guided eps = w * eps(cond) + (1 - w) * eps(null): at w = 0 the sample is the unguided one conditioned on the
    # null embedding, at w = 1 the null drops out; the null embedding is a secret input of the user's
    folder, program, weights = text_conditioned
    rng = np.random.default_rng(12)
    prompt, empty = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(2))
    np.save(tmp_path / "prompt.npy", prompt)
    np.save(tmp_path / "empty.npy", empty)
    cond, null = ("--condition", str(tmp_path / "prompt.npy")), ("--null-condition", str(tmp_path / "empty.npy"))
    x_w0, twin_w0 = _sample_x0(program, weights, tmp_path, "w0", "plaintext", *cond, *null, "--guidance", "0")
    x_empty, _ = _sample_x0(program, weights, tmp_path, "empty", "plaintext", "--condition", null[1])
    np.testing.assert_allclose(x_w0, x_empty, rtol=0, atol=1e-5)
    np.testing.assert_allclose(twin_w0, x_empty, rtol=0, atol=1e-4)     # the float sampler takes it too
    x_w1, _ = _sample_x0(program, weights, tmp_path, "w1", "plaintext", *cond, *null, "--guidance", "1")
    x_prompt, _ = _sample_x0(program, weights, tmp_path, "prompt", "plaintext", *cond)
    np.testing.assert_allclose(x_w1, x_prompt, rtol=0, atol=1e-5)
    x_w3, twin_w3 = _sample_x0(program, weights, tmp_path, "w3", "plaintext", *cond, *null, "--guidance", "3")
    x_w3_zeros, _ = _sample_x0(program, weights, tmp_path, "w3z", "plaintext", *cond, "--guidance", "3")
    assert np.max(np.abs(x_w3 - x_w3_zeros)) > 1e-2                      # not the zeros default
    x_sim, twin_sim = _sample_x0(program, weights, tmp_path, "w3sim", "sim", *cond, *null, "--guidance", "3")
    np.testing.assert_allclose(twin_sim, twin_w3, rtol=0, atol=1e-6)
    assert np.max(np.abs(x_sim - twin_sim)) < 0.05 * max(1.0, float(np.max(np.abs(twin_sim))))
    # without guidance there is nothing to take it for
    assert cli(["sample", str(program), "--weights", str(weights), "--mode", "plaintext", "--steps", "2",
                "-o", str(tmp_path / "g.png"), *null]) != 0
    assert "--null-condition" in capsys.readouterr().err


def test_a_bad_condition_is_named_with_what_was_expected(text_conditioned, tiny, tmp_path, capsys):
    folder, program, weights = text_conditioned
    np.save(tmp_path / "bad.npy", np.zeros((3, 4, 15), np.float32))
    assert cli(["sample", str(program), "--weights", str(weights), "--mode", "plaintext", "--steps", "2",
                "-o", str(tmp_path / "g.png"), "--condition", str(tmp_path / "bad.npy")]) != 0
    err = capsys.readouterr().err
    assert "shape [3, 4, 15], expected [2, 4, 16] (or [4, 16] for every image)" in err
    labelled, labelled_weights = tiny[1]["direct"]
    assert cli(["sample", str(labelled), "--weights", str(labelled_weights), "--mode", "plaintext", "--steps", "2",
                "-o", str(tmp_path / "g.png"), "--condition", str(tmp_path / "bad.npy")]) != 0
    assert "give them with --label" in capsys.readouterr().err


def test_sample_cli_local_three_processes(tiny, tmp_path):
    """Three real party processes: the same images as the simulation, and the share log shows that only the
    user ever receives peers' shares of x_t, once, after the last step."""
    folder, programs = tiny
    program, weights = programs["direct"]
    work = tmp_path / "work"
    common = ["sample", str(program), "--weights", str(weights), "--steps", "3", "--sampler", "ddpm",
              "--train-timesteps", str(T_SHORT), "--seed", "5"]
    assert cli(common + ["--mode", "local", "-o", str(tmp_path / "l.png"), "--metrics", str(tmp_path / "l.json"),
                         "--work-dir", str(work)]) == 0
    assert cli(common + ["--mode", "sim", "-o", str(tmp_path / "s.png"), "--metrics", str(tmp_path / "s.json")]) == 0
    local, sim = (json.loads((tmp_path / f"{m}.json").read_text()) for m in ("l", "s"))
    # Same samples (PSNR vs the same twin within fixed-point noise), same per-step protocol bytes.
    for a, b in zip(local["quality"]["psnr_db"], sim["quality"]["psnr_db"]):
        assert a == b or abs(a - b) < 3
    assert local["totals"]["bytes_per_step"] == pytest.approx(sim["totals"]["bytes_per_step"], rel=0.02)
    statuses = [json.loads((work / f"party{r}.status.json").read_text())["metrics"] for r in range(3)]
    assert [s["roles"] for s in statuses] == [["user"], ["model_owner"], []]
    for rank, s in enumerate(statuses):
        assert s["runs"] == 3
        state_shares = [r for r in s["received_shares"] if r["name"] in (ss.STATE, ss.NEXT)]
        if rank == 0:   # the user: the other two parties' shares of x_0, after the last run, nothing before
            assert sorted(r["from"] for r in state_shares) == [1, 2]
            assert all(r["after_runs"] == 3 for r in state_shares)
        else:           # the others: only their own share of x_T, from the user, before any run
            assert state_shares == [{"name": ss.STATE, "from": 0, "after_runs": 0}]
        assert s["received_weight_shares"] == (0 if rank == 1 else 8)


def test_a_failing_party_stops_the_run_with_a_clear_error(tiny, tmp_path, monkeypatch, capsys):
    folder, programs = tiny
    program, weights = programs["direct"]
    monkeypatch.setenv("CIPHERDM_FAULT", "1:run:exit")
    code = cli(["sample", str(program), "--weights", str(weights), "--steps", "2", "--train-timesteps",
                str(T_SHORT), "--mode", "local", "-o", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert "party 1 (model_owner" in err and "injected failure" in err
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing written


def _sample_error(args, capsys, tmp_path) -> str:
    out = tmp_path / "never.png"
    assert cli(["sample", *args, "-o", str(out)]) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_unknown_sampler_and_too_many_steps_are_named_together(tiny, tmp_path, capsys):
    folder, programs = tiny
    program, weights = programs["direct"]
    err = _sample_error([str(program), "--weights", str(weights), "--sampler", "euler", "--steps", "2000"],
                        capsys, tmp_path)
    assert "unknown sampler 'euler'" in err and "--steps 2000 must be between 1 and T = 1000" in err


def test_missing_weights(tiny, tmp_path, capsys):
    folder, programs = tiny
    program, _ = programs["direct"]
    assert "--weights is missing" in _sample_error([str(program)], capsys, tmp_path)
    err = _sample_error([str(program), "--weights", str(tmp_path / "nope.npz")], capsys, tmp_path)
    assert "nope.npz does not exist" in err


def test_batch_that_differs_from_the_program(tiny, tmp_path, capsys):
    folder, programs = tiny
    program, weights = programs["direct"]
    err = _sample_error([str(program), "--weights", str(weights), "--batch", "3"], capsys, tmp_path)
    assert "--batch 3 differs from the program's batch 2" in err
    err = _sample_error([str(program), "--weights", str(weights), "--batch", "3", "--guidance", "2"], capsys,
                        tmp_path)
    assert "--batch 3 does not fit the program's batch 2" in err


def test_a_model_that_is_not_a_unet(tmp_path, capsys):
    model, _ = secure_models.tiny(np.random.default_rng(0))    # inputs x [2, 4] and t [1]
    onnx.save(model, tmp_path / "m.onnx")
    assert cli(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cdm"), "--public", "t",
                "--direct"]) == 0
    err = _sample_error([str(tmp_path / "m.cdm"), "--weights", str(tmp_path / "m.weights.npz")], capsys, tmp_path)
    assert "not a diffusion U-Net" in err and "0 inputs of rank 4" in err and "sample [B, C, H, W]" in err


def test_labels_must_fit_the_model(tiny, tmp_path, capsys):
    folder, programs = tiny
    program, weights = programs["direct"]
    err = _sample_error([str(program), "--weights", str(weights), "--label", "7"], capsys, tmp_path)
    assert "labels [7, 7] outside 0..2" in err


# ---------------------------------------------------------------------------------------------------------------
# Calibration along a trajectory


def test_trajectory_feeds_compile_calibration(tiny, tmp_path):
    folder, _ = tiny
    calib = tmp_path / "calib.npz"
    assert cli(["trajectory", str(folder / "tiny.onnx"), "--steps", "4", "--seed", "1", "--guidance", "2",
                "-o", str(calib)]) == 0
    with np.load(calib) as data:
        arrays = {k: data[k] for k in data.files}
    # 4 steps, each a call on the label and one on the null label.
    assert arrays["sample"].shape == (8, 2, 1, 8, 8) and arrays["timestep"].shape == (8, 2)
    assert sorted(set(arrays["timestep"][:, 0].tolist()), reverse=True) == [999.0, 666.0, 333.0, 0.0]
    assert arrays["class_labels"][0].tolist() == [[1, 0, 0], [0, 1, 0]] and not arrays["class_labels"][1].any()
    assert cli(["compile", str(folder / "tiny.onnx"), "-o", str(tmp_path / "c.cdm"), "--public", "timestep",
                "--calibration", str(calib)]) == 0
    assert read_artifact(tmp_path / "c.cdm").report["calibration"]["cases"] == 8


def test_plaintext_twin_is_the_original_float_model(tiny):
    """A rewritten program keeps the graph from before the rewrites (reference.onnx): the twin's eps equals
    onnxruntime on the original model file, while the stored rewritten graph differs from it."""
    import onnxruntime as ort

    folder, programs = tiny
    artifact = read_artifact(programs["cipherdm"][0])
    weights = read_weights(programs["cipherdm"][1], artifact)
    signature = ss.unet_signature(artifact)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    t = np.array([500.0, 500.0], np.float32)
    cond = np.eye(3, dtype=np.float32)[[0, 2]]
    original = ort.InferenceSession(str(folder / "tiny.onnx"), providers=["CPUExecutionProvider"])
    expected = original.run(None, {"sample": x, "timestep": t, "class_labels": cond})[0]
    np.testing.assert_allclose(ss.float_eps_fn(artifact, weights, signature)(x, t, cond), expected, atol=1e-6)
    rewritten = ss.float_eps_fn(artifact, weights, signature, graph=artifact.onnx_graph)(x, t, cond)
    assert 1e-6 < np.abs(rewritten - expected).max() < REWRITE_ATOL
