"""Three real party processes over brpc on 127.0.0.1: results, privacy of the outputs, refusals and failures.

The default suite keeps three short runs (a few seconds each: spu import and link set-up dominate); the rest is
marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import secure_models
from runtime.local import free_ports, run_local
from runtime.party import PartiesConfig, PartyError
from tools.cli import main as cli

FAILURE_DEADLINE_S = 30.0


def _compile(folder: Path, name: str, seed: int = 0, extra=()) -> tuple[Path, dict]:
    model, inputs = secure_models.BUILDERS[name](np.random.default_rng(seed))
    onnx.save(model, folder / f"{name}.onnx")
    np.savez(folder / f"{name}.inputs.npz", **inputs)
    # --direct: these tests check the parties' mechanics against onnxruntime on the original graph; the
    # rewrites' approximation error is checked in test_secure_run and test_rewrite_pipeline.
    args = ["compile", str(folder / f"{name}.onnx"), "-o", str(folder / f"{name}.cdm"), "--direct"]
    for public in secure_models.PUBLIC[name]:
        args += ["--public", public]
    assert cli(args + list(extra)) == 0
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return folder / f"{name}.cdm", expected


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (entry / "status").read_text().splitlines()
                          if line.startswith("State:")), "")
        except OSError:
            continue
        if text in cmdline and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local")
    program, expected = _compile(folder, "tiny")
    return folder, program, expected


def _files(folder: Path, rank: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f"party{rank}."))


def test_local_run_matches_and_only_the_user_sees_the_output(tiny, tmp_path, capsys):
    folder, program, expected = tiny
    work, out, metrics_path = tmp_path / "work", tmp_path / "out.npz", tmp_path / "metrics.json"
    status = cli(["run", str(program), "--weights", str(folder / "tiny.weights.npz"), "--inputs",
                  str(folder / "tiny.inputs.npz"), "-o", str(out), "--metrics", str(metrics_path),
                  "--work-dir", str(work)])
    assert status == 0
    table = capsys.readouterr().out
    assert "3-party SPU traffic" in table and "model_owner" in table

    with np.load(out) as data:
        for key, ref in expected.items():
            np.testing.assert_allclose(data[key], ref, atol=0.02, rtol=0.015, err_msg=key)
            outputs = {key: data[key] for key in data.files}

    metrics = json.loads(metrics_path.read_text())
    assert metrics["mode"] == "local"
    assert [p["roles"] for p in metrics["parties"]] == [["user"], ["model_owner"], []]
    assert metrics["total_bytes"] == sum(p["send_bytes"] for p in metrics["parties"]) > 0
    assert metrics["rounds"] == max(p["send_actions"] for p in metrics["parties"])
    assert all(p["peak_rss_bytes"] > 50 << 20 for p in metrics["parties"])
    assert metrics["ops"]["HLO"][0]["send_bytes"] > 0
    # The model owner shares the weights, the user its secret input; the third party shares nothing.
    sharing = [p["sharing_send_bytes"] for p in metrics["parties"]]
    assert sharing[0] > 0 and sharing[1] > 0

    # Only the receiver wrote outputs; nothing the other parties left holds them.
    statuses = [json.loads((work / f"party{r}.status.json").read_text()) for r in range(3)]
    assert [s["metrics"]["wrote_output"] for s in statuses] == [True, False, False]
    assert not list(work.glob("*.npz"))
    needles = [v.astype(np.float32).tobytes() for v in outputs.values()]
    needles += [f"{x:.5f}".encode() for v in outputs.values() for x in v.ravel() if abs(x) >= 1]
    for rank in (1, 2):
        files = _files(work, rank)
        assert {f.suffix for f in files} >= {".log", ".json", ".out"}
        for f in files:
            data = f.read_bytes()
            assert not [n for n in needles if n in data], f"{f.name} holds output values"
    assert not _processes_mentioning(str(work))


def test_a_party_with_another_program_is_refused(tiny, tmp_path):
    folder, program, _ = tiny
    other, _ = _compile(tmp_path, "tiny", extra=["--fxp-bits", "16"])
    start = time.monotonic()
    with pytest.raises(PartyError) as err:
        run_local(program, folder / "tiny.weights.npz", folder / "tiny.inputs.npz", tmp_path / "o.npz",
                  programs={2: str(other)}, work_dir=str(tmp_path / "work"))
    text = str(err.value)
    assert "refuses to run" in text and "artifact digest" in text and "fxp_bits" in text and "party 2" in text
    # (Whether the others' refusals are listed too depends on timing: the first failure stops everyone.)
    assert time.monotonic() - start < FAILURE_DEADLINE_S
    assert not (tmp_path / "o.npz").exists()
    assert not _processes_mentioning(str(tmp_path / "work"))


def test_a_killed_party_is_reported_and_nothing_is_left(tiny, tmp_path):
    folder, program, _ = tiny
    start = time.monotonic()
    with pytest.raises(PartyError) as err:
        run_local(program, folder / "tiny.weights.npz", folder / "tiny.inputs.npz", tmp_path / "o.npz",
                  env={"CIPHERDM_FAULT": "1:run:kill"}, work_dir=str(tmp_path / "work"))
    assert time.monotonic() - start < FAILURE_DEADLINE_S
    assert str(err.value).startswith("the secure run failed") and "party 1 (model_owner" in str(err.value)
    assert "killed by signal SIGKILL" in str(err.value).split(";")[0]
    assert not (tmp_path / "o.npz").exists()
    assert not _processes_mentioning(str(tmp_path / "work"))


@pytest.mark.slow
def test_a_frozen_party_is_detected_by_heartbeats(tiny, tmp_path):
    folder, program, _ = tiny
    start = time.monotonic()
    with pytest.raises(PartyError) as err:
        run_local(program, folder / "tiny.weights.npz", folder / "tiny.inputs.npz", tmp_path / "o.npz",
                  env={"CIPHERDM_FAULT": "2:run:stop"}, heartbeat_timeout_s=5, work_dir=str(tmp_path / "work"))
    elapsed = time.monotonic() - start
    first = str(err.value).split(";")[0]
    assert "party 2 (" in first and "stopped answering" in first, str(err.value)
    assert elapsed < FAILURE_DEADLINE_S
    assert not _processes_mentioning(str(tmp_path / "work"))


def _party_command(rank, parties_path, program, folder, name, out):
    cmd = [sys.executable, "-m", "tools.cli", "party", "--rank", str(rank), "--parties", str(parties_path),
           str(program), "--spu-log", str(folder / f"p{rank}.log")]
    if rank == 1:
        cmd += ["--weights", str(folder / f"{name}.weights.npz")]
    if rank == 0:
        cmd += ["--inputs", str(folder / f"{name}.inputs.npz"), "-o", str(out)]
    return cmd


@pytest.mark.slow
def test_party_processes_without_supervisor_stop_when_a_peer_dies(tiny, tmp_path):
    """One process per host: the survivors notice a dead peer by themselves (heartbeats) and name it."""
    folder, program, _ = tiny
    parties = PartiesConfig([f"127.0.0.1:{p}" for p in free_ports(3)], heartbeat_timeout_s=10)
    parties.save(tmp_path / "parties.json")
    env = dict(os.environ, CIPHERDM_FAULT="2:run:kill")
    procs = [subprocess.Popen(_party_command(r, tmp_path / "parties.json", program, folder, "tiny",
                                             tmp_path / "o.npz"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
             for r in range(3)]
    start = time.monotonic()
    try:
        outs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert procs[2].returncode == -signal.SIGKILL
    for rank in (0, 1):
        assert procs[rank].returncode == 3, outs[rank]
        assert "party 2 (compute only" in outs[rank] and "failed" in outs[rank]
    assert time.monotonic() - start < 10 + FAILURE_DEADLINE_S
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.slow
def test_ctrl_c_stops_every_party(tiny, tmp_path):
    folder, program, _ = tiny
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "tools.cli", "run", str(program), "--weights", str(folder / "tiny.weights.npz"),
           "--inputs", str(folder / "tiny.inputs.npz"), "-o", str(tmp_path / "o.npz"), "--work-dir", str(work)]
    env = dict(os.environ, CIPHERDM_FAULT="2:run:stop")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_processes_mentioning(str(work))) < 4:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert not _processes_mentioning(str(work))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnet", "attention"])
def test_local_run_of_conv_and_attention_models(name, tmp_path):
    from test_secure_run import TOLERANCES, assert_close

    program, expected = _compile(tmp_path, name, seed=3)
    run_local(program, tmp_path / f"{name}.weights.npz", tmp_path / f"{name}.inputs.npz", tmp_path / "o.npz")
    atol, rtol = TOLERANCES[name]
    with np.load(tmp_path / "o.npz") as data:
        for key, ref in expected.items():
            assert_close(data[key], ref.astype(np.float64), atol, rtol, f"{name}:{key}")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="needs the openssl command")
def test_tls_links(tiny, tmp_path):
    from runtime.party import TlsConfig

    folder, program, expected = tiny
    certs = tmp_path / "certs"
    certs.mkdir()
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "1", "-subj", f"/CN={ca}", cwd=certs)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "party.key", "-out", "party.csr", "-subj",
             "/CN=127.0.0.1", cwd=certs)
    (certs / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "party.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "party.crt", "-days", "1", "-extfile", "ext.cnf", cwd=certs)

    tls = TlsConfig(str(certs / "party.crt"), str(certs / "party.key"), str(certs / "ca.crt"))
    run_local(program, folder / "tiny.weights.npz", folder / "tiny.inputs.npz", tmp_path / "o.npz", tls=tls)
    with np.load(tmp_path / "o.npz") as data:
        np.testing.assert_allclose(data["y"], expected["y"], atol=0.02, rtol=0.015)

    # A CA that did not sign the parties' certificates: verification fails, the parties say so and stop.
    wrong = TlsConfig(str(certs / "party.crt"), str(certs / "party.key"), str(certs / "other.crt"))
    with pytest.raises(PartyError, match="could not connect.*TLS certificates"):
        run_local(program, folder / "tiny.weights.npz", folder / "tiny.inputs.npz", tmp_path / "o2.npz",
                  tls=wrong, connect_timeout_s=5, work_dir=str(tmp_path / "work"))
    assert not _processes_mentioning(str(tmp_path / "work"))
