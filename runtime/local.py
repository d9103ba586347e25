"""``--mode local``: three party processes on 127.0.0.1, started, supervised and cleaned up here.

Each child is ``python -m tools.cli party --rank R ...`` with only what its roles allow: the model owner gets the
weights file, the user the inputs file and the output path, the third party only the program. The supervisor
checks every file first (so a bad input is one clear error and no process is started), picks free ports,
writes parties.json into a work folder and watches the children:

* any child exiting with an error (or killed) makes the supervisor kill the others at once and raise one error
  naming the failed party first and what the others reported;
* the children watch each other with heartbeats, so a party that stops answering is reported by its peers
  within ``heartbeat_timeout_s`` and the supervisor then stops the rest;
* children run in their own sessions and die with the supervisor (``PR_SET_PDEATHSIG``); Ctrl-C,
  SIGTERM, errors and normal exits all end with no child left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import CipherdmError
from compiler.spu_compile import MODEL_OWNER, USER
from runtime.party import PartiesConfig, PartyError

@dataclass
class LocalRun:
    """What the parties reported (their metrics dicts, by rank) and the supervisor's own timings."""
    metrics: list[dict]
    wall_time: float
    work_dir: str
    outputs_path: str
    failures: list[str] = field(default_factory=list)


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_local(artifact_path, weights_path, inputs_path, output_path, *, work_dir: str | None = None,
              roles: dict[str, int] | None = None, heartbeat_timeout_s: float = 15.0,
              recv_timeout_s: float = 300.0, programs: dict[int, str] | None = None,
              env: dict[str, str] | None = None, tls=None, connect_timeout_s: float = 60.0,
              command=None, on_poll=None) -> LocalRun:
    """Run the program as three local processes; raises PartyError naming the failed party.

    ``work_dir`` keeps parties.json, every party's console output (``partyR.out``), SPU log (``partyR.spu.log``)
    and status; by default a temporary folder removed afterwards. ``programs`` hands some ranks another program
    file (tests use it to check the handshake); ``env`` adds environment variables to the children.
    ``command(rank, parties, parties_path, work)`` replaces the ``cipherdm party`` command line of each child
    (the sampler runs its own party program; it must write ``--status-out``-style status files the same way);
    ``on_poll()`` is called about every 50 ms while the children run (progress display).
    """
    keep = work_dir is not None
    work = Path(work_dir or tempfile.mkdtemp(prefix="cipherdm-local-"))
    work.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3)
    parties = PartiesConfig([f"127.0.0.1:{p}" for p in ports], dict(roles or {USER: 0, MODEL_OWNER: 1}),
                            tls=tls, connect_timeout_s=connect_timeout_s, recv_timeout_s=recv_timeout_s,
                            heartbeat_timeout_s=heartbeat_timeout_s)
    parties_path = work / "parties.json"
    parties.save(parties_path)

    commands = []
    for rank in range(3):
        if command is not None:
            commands.append(command(rank, parties, parties_path, work))
            continue
        program = (programs or {}).get(rank, artifact_path)
        cmd = [sys.executable, "-m", "tools.cli", "party", "--rank", str(rank), "--parties",
               str(parties_path), str(program), "--spu-log", str(work / f"party{rank}.spu.log"),
               "--status-out", str(work / f"party{rank}.status.json")]
        if rank == parties.roles[MODEL_OWNER]:
            cmd += ["--weights", str(weights_path)]
        if rank == parties.roles[USER]:
            cmd += ["--inputs", str(inputs_path), "--output", str(output_path)]
        commands.append(cmd)

    # CIPHERDM_SUPERVISOR_PID: each child asks the kernel to kill it if this process dies (PR_SET_PDEATHSIG);
    # set in the child rather than with preexec_fn, which forks a multithreaded (jax) process unsafely.
    env = dict(os.environ, PYTHONUNBUFFERED="1", CIPHERDM_SUPERVISOR_PID=str(os.getpid()), **(env or {}))
    # Three parties share this host's cores: more XLA/SPU threads than that only adds contention. SPU's products
    # follow OMP_THREAD_LIMIT only, which importing the runtime package put in os.environ (runtime/threads.py).
    env.setdefault("OMP_NUM_THREADS", "1")
    procs: list[subprocess.Popen] = []
    start = time.perf_counter()
    previous = _install_signal_handlers()
    try:
        for rank, cmd in enumerate(commands):
            out = open(work / f"party{rank}.out", "wb")
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True))
            out.close()
        failures = _supervise(procs, parties, work, on_poll)
        wall = time.perf_counter() - start
        if failures:
            raise PartyError("the secure run failed", failures)
        metrics = [_read_status(work, rank).get("metrics", {}) for rank in range(3)]
        return LocalRun(metrics, wall, str(work), str(output_path))
    finally:
        _stop_all(procs)
        _restore_signal_handlers(previous)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _supervise(procs, parties: PartiesConfig, work: Path, on_poll=None) -> list[str]:
    """Wait for all children; on the first failure stop the rest and explain, failed party first."""
    first_failed: int | None = None
    while True:
        if on_poll is not None:
            on_poll()
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            first_failed = failed[0]
            # Let the others report what they saw (a heartbeat failure naming the party) for a moment.
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.05)
            break
        if all(c == 0 for c in codes):
            return []
        time.sleep(0.05)
    _stop_all(procs)
    return _explain(procs, parties, work, first_failed)


def _explain(procs, parties: PartiesConfig, work: Path, first: int) -> list[str]:
    messages = []
    order = [first] + [r for r in range(len(procs)) if r != first]
    seen = set()
    first_kind = _read_status(work, first).get("kind")
    for rank in order:
        code = procs[rank].returncode
        status = _read_status(work, rank)
        who = parties.describe(rank)
        if rank != first and first_kind == "HandshakeError" and status.get("kind") == first_kind:
            messages.append(f"{who} refused too")
        elif status.get("error"):
            text = status["error"]
            if text in seen:
                continue
            seen.add(text)
            messages.append(f"{who} exited with code {code}: {text}")
        elif code is not None and code < 0:
            messages.append(f"{who} was killed by signal {signal.Signals(-code).name}"
                            + (" (stopped by the supervisor after another party failed)" if rank != first else ""))
        elif code not in (0, None):
            tail = _tail(work / f"party{rank}.out")
            messages.append(f"{who} exited with code {code}" + (f": {tail}" if tail else ""))
    return messages


def _read_status(work: Path, rank: int) -> dict:
    path = work / f"party{rank}.status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    text = [t for t in text if "thread_pool" not in t]
    return " | ".join(text[-lines:])


def _stop_all(procs, grace: float = 1.0) -> None:
    """SIGTERM every live child (and its process group), SIGKILL what is left after ``grace`` seconds."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _install_signal_handlers():
    # SIGTERM becomes KeyboardInterrupt so the finally clause stops the children (SIGINT already is one).
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    try:
        return signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: callers there handle their own signals
        return None


def _restore_signal_handlers(previous) -> None:
    if previous is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)


__all__ = ["run_local", "LocalRun", "free_ports", "CipherdmError"]
