"""One compute party: link, handshake, input sharing, secure run, reveal; and the session a sampler reuses.

Two levels:

``PartySession`` (reusable building block; one per process and rank)::

    session = PartySession(rank, parties, config, log_path="party0.spu.log")
    session.connect()                                  # brpc mesh + heartbeats
    session.handshake(hello(artifact, exe, parties))   # refuse a program that differs anywhere
    session.share_secret("w", w_or_None, owner=1)      # owner makes 3 shares, keeps one, sends two
    session.share_public("t", t_or_None, source=0)     # source sends the plain value; all make it locally
    prof = session.run(exe)                            # outputs stay secret in this party's runtime
    session.rename("noise_pred", "eps")                # local, no traffic: chain programs on shares
    out = session.reveal(["y"], to=0)                  # others send their shares; dict on rank 0, else None
    session.finish()                                   # leave together (collective)

  A value lives in the SPU runtime (``session.runtime``) under its name until deleted, so a sampler shares the
  weights once, runs one compiled U-Net step per timestep with x_t kept secret between steps, and reveals only
  the final image. ``run`` returns that execution's :class:`runtime.spu_profile.PartyProfile` (per-op cost and
  link totals read from this party's own SPU log); ``session.traffic`` counts the bytes cipherdm itself sent
  (handshake, shares, reveals), which SPU's link totals do not include.

``run_party(rank, parties, artifact_path, weights=..., inputs=..., output=...)``
    The whole life of one party for ``cipherdm party`` and each process of ``cipherdm run --mode local``.

Failure handling: every party sends a heartbeat on a sub-link every second; a party that hears nothing from a
peer for ``heartbeat_timeout_s`` (default 15 s) reports it by rank, role and address and exits, even while SPU
is blocked inside a protocol step (see :class:`Heartbeat`). SPU's own receive timeout (``recv_timeout_s``,
default 300 s) only backs that up, so a slow step is not mistaken for a dead peer.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.errors import CipherdmError
from compiler.spu_compile import MODEL_OWNER, PUBLIC, USER

EXIT_PEER_FAILED = 3
LINGER_S = 1.0
ROLES_WITH_DATA = (USER, MODEL_OWNER)


class PartyError(CipherdmError):
    """A party failed, stopped answering, or the parties disagree."""


class HandshakeError(PartyError):
    """The parties do not run the same program with the same settings."""


class ConfigFileError(CipherdmError):
    """parties.json is missing or malformed."""


# ---------------------------------------------------------------------------------------------------------------
# parties.json


@dataclass
class TlsConfig:
    cert: str
    key: str
    ca: str | None = None

    def to_json(self) -> dict:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}


@dataclass
class PartiesConfig:
    """The three addresses and who is who. ``roles`` maps "user" and "model_owner" to ranks."""
    addresses: list[str]
    roles: dict[str, int] = field(default_factory=lambda: {USER: 0, MODEL_OWNER: 1})
    tls: TlsConfig | None = None
    connect_timeout_s: float = 60.0
    recv_timeout_s: float = 300.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 15.0

    def role_of(self, rank: int) -> list[str]:
        return [role for role, r in self.roles.items() if r == rank]

    def parties_on_host(self, rank: int) -> int:
        """How many of the parties share ``rank``'s host (by address; the loopback names count as one host)."""
        def host(address: str) -> str:
            name = address.rsplit(":", 1)[0].strip("[]").lower()
            return "loopback" if name in ("localhost", "::1") or name.startswith("127.") else name
        return sum(host(a) == host(self.addresses[rank]) for a in self.addresses)

    def describe(self, rank: int) -> str:
        roles = self.role_of(rank)
        return f"party {rank} ({', '.join(roles) if roles else 'compute only'}, {self.addresses[rank]})"

    def to_json(self) -> dict:
        data = {"parties": [{"rank": i, "address": a} for i, a in enumerate(self.addresses)],
                "roles": dict(self.roles), "connect_timeout_s": self.connect_timeout_s,
                "recv_timeout_s": self.recv_timeout_s, "heartbeat_interval_s": self.heartbeat_interval_s,
                "heartbeat_timeout_s": self.heartbeat_timeout_s}
        if self.tls:
            data["tls"] = self.tls.to_json()
        return data

    def save(self, path) -> None:
        from compiler.artifact import atomic_output
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "PartiesConfig":
        path = Path(path)
        if not path.exists():
            raise ConfigFileError(f"parties file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigFileError(f"parties file {path} is not valid JSON: {exc}") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: dict, source: str = "parties.json") -> "PartiesConfig":
        problems = []
        parties = data.get("parties") if isinstance(data, dict) else None
        if not isinstance(parties, list) or len(parties) != 3:
            raise ConfigFileError(f"{source}: 'parties' must list exactly three parties "
                                  '(e.g. [{"rank": 0, "address": "10.0.0.1:9100"}, ...])')
        addresses = [None] * 3
        for i, p in enumerate(parties):
            address = p.get("address") if isinstance(p, dict) else p
            rank = p.get("rank", i) if isinstance(p, dict) else i
            if not isinstance(rank, int) or not 0 <= rank < 3 or addresses[rank] is not None:
                problems.append(f"party entry {i}: rank {rank!r} is not 0, 1 or 2, or is repeated")
            elif not isinstance(address, str) or ":" not in address:
                problems.append(f"party {rank}: address {address!r} is not HOST:PORT")
            else:
                addresses[rank] = address
        roles = dict(data.get("roles") or {USER: 0, MODEL_OWNER: 1})
        for role in roles:
            if role not in ROLES_WITH_DATA:
                problems.append(f"unknown role '{role}' (roles: {', '.join(ROLES_WITH_DATA)})")
        for role in ROLES_WITH_DATA:
            roles.setdefault(role, {USER: 0, MODEL_OWNER: 1}[role])
            if roles[role] not in (0, 1, 2):
                problems.append(f"role {role} is mapped to {roles[role]!r}, not a rank 0-2")
        tls = None
        if data.get("tls"):
            t = data["tls"]
            missing = [k for k in ("cert", "key") if not t.get(k)]
            if missing:
                problems.append(f"tls needs {' and '.join(missing)}")
            else:
                tls = TlsConfig(t["cert"], t["key"], t.get("ca"))
                for k, v in tls.to_json().items():
                    if v and not Path(v).exists():
                        problems.append(f"tls {k} file {v} does not exist")
        if problems:
            raise ConfigFileError(f"{source} is not a valid parties file", problems)
        kwargs = {k: float(data[k]) for k in ("connect_timeout_s", "recv_timeout_s", "heartbeat_interval_s",
                                             "heartbeat_timeout_s") if k in data}
        return cls(addresses, roles, tls, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Messages: a JSON header and binary blobs


def pack(header: dict, blobs: list[bytes] = ()) -> bytes:
    head = json.dumps(header).encode("utf-8")
    parts = [struct.pack("<QQ", len(head), len(blobs)), head]
    for blob in blobs:
        parts += [struct.pack("<Q", len(blob)), blob]
    return b"".join(parts)


def unpack(data: bytes) -> tuple[dict, list[bytes]]:
    head_len, count = struct.unpack_from("<QQ", data, 0)
    pos = 16
    header = json.loads(data[pos:pos + head_len])
    pos += head_len
    blobs = []
    for _ in range(count):
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        blobs.append(data[pos:pos + n])
        pos += n
    return header, blobs


def array_to_bytes(a: np.ndarray) -> tuple[dict, bytes]:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape)}, a.tobytes()


def array_from_bytes(meta: dict, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"]).copy()


# ---------------------------------------------------------------------------------------------------------------
# Heartbeats


class Heartbeat:
    """Liveness of the peers over a sub-link, independent of how long an SPU step takes.

    One sender thread per peer beats every ``interval`` seconds (a synchronous send: a broken link raises here
    instead of killing the process from a brpc thread, which is what a failed asynchronous send does); one
    receiver thread per peer records when it last heard from it; a watchdog calls ``on_failure(rank, reason)``
    when a peer is silent for ``timeout`` seconds or its link breaks. A peer that said goodbye (finished
    normally) is no longer watched.
    """

    def __init__(self, link, rank: int, world: int, interval: float, timeout: float, on_failure):
        self.link, self.rank, self.world = link, rank, world
        self.interval, self.timeout, self.on_failure = interval, timeout, on_failure
        self.peers = [r for r in range(world) if r != rank]
        now = time.monotonic()
        self.last_seen = {r: now for r in self.peers}
        self.finished: set[int] = set()
        self.stopped = threading.Event()
        self._failed = threading.Lock()
        self.threads = [threading.Thread(target=self._watch, name="hb-watch", daemon=True)]
        for r in self.peers:
            self.threads.append(threading.Thread(target=self._send_loop, args=(r,), name=f"hb-send{r}", daemon=True))
            self.threads.append(threading.Thread(target=self._recv_loop, args=(r,), name=f"hb-recv{r}", daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, wait: float = 5.0) -> None:
        """Stop watching and say goodbye: every beat a peer sent must be received before the links stop,
        because yacl acknowledges each message and an acknowledgement to a process that is gone ends this
        one (from a brpc thread, exit code 255) once its retries run out."""
        self.stopped.set()
        deadline = time.monotonic() + wait
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _fail(self, peer: int, reason: str) -> None:
        if self.stopped.is_set() or peer in self.finished or not self._failed.acquire(blocking=False):
            return
        self.on_failure(peer, reason)

    def _send_loop(self, peer: int) -> None:
        while True:
            stopping = self.stopped.wait(self.interval)
            try:
                self.link.send(peer, b"bye" if stopping else b"beat")
            except Exception as exc:  # noqa: BLE001
                if not stopping:
                    self._fail(peer, f"the link to it broke ({_short(exc, 200)})")
                return
            if stopping:
                return

    def _recv_loop(self, peer: int) -> None:
        while True:  # until the peer's goodbye, even after stop(): its beats must all be consumed
            try:
                msg = self.link.recv(peer)
            except Exception as exc:  # noqa: BLE001
                self._fail(peer, f"no heartbeat received ({_short(exc, 200)})")
                return
            self.last_seen[peer] = time.monotonic()
            if msg == b"bye":
                self.finished.add(peer)
                return

    def _watch(self) -> None:
        while not self.stopped.wait(min(1.0, self.interval)):
            now = time.monotonic()
            for r in self.peers:
                if r not in self.finished and now - self.last_seen[r] > self.timeout:
                    self._fail(r, f"it stopped answering (no heartbeat for {now - self.last_seen[r]:.0f} s)")
                    return


# ---------------------------------------------------------------------------------------------------------------
# The session


@dataclass
class Traffic:
    """What cipherdm sent itself, outside SPU's execution (SPU's link totals count only the run)."""
    send_bytes: int = 0
    send_actions: int = 0

    def add(self, data: bytes) -> None:
        self.send_bytes += len(data)
        self.send_actions += 1


class PartySession:
    def __init__(self, rank: int, parties: PartiesConfig, config=None, *, log_path: str | None = None,
                 profile: bool = True, on_peer_failure=None):
        from runtime.spu_config import SecureConfig

        self.rank = rank
        self.parties = parties
        self.config = config or SecureConfig()
        self.world = self.config.world_size
        self.profile_enabled = profile
        self.log_path = log_path
        self._log_offset = 0
        self.traffic = Traffic()
        self.link = None
        self.hb_link = None
        self.runtime = None
        self.heartbeat: Heartbeat | None = None
        # Called from a heartbeat thread with a message naming the failed peer; must not return normally
        # while the main thread is blocked in SPU (the default prints and exits the process).
        self.on_peer_failure = on_peer_failure or self._die
        self.timings: dict[str, float] = {}
        if log_path:
            from runtime.spu_profile import redirect_log
            Path(log_path).touch()
            redirect_log(log_path)

    # -- set-up ----------------------------------------------------------------------------------------------

    def describe(self, rank: int | None = None) -> str:
        return self.parties.describe(self.rank if rank is None else rank)

    def connect(self) -> None:
        from spu import api, libspu
        from runtime.spu_config import runtime_config

        start = time.perf_counter()
        desc = libspu.link.Desc()
        for r, address in enumerate(self.parties.addresses):
            desc.add_party(f"party{r}", address)
        desc.recv_timeout_ms = int(self.parties.recv_timeout_s * 1000)
        desc.connect_retry_interval_ms = 500
        desc.connect_retry_times = max(1, int(self.parties.connect_timeout_s / 0.5))
        desc.http_max_payload_size = 32 << 20
        # A send that still fails after its retries ends the process from a brpc thread (yacl exits with -1),
        # with no word on who failed: give the retries ~75 s so that the heartbeat watchdog (15 s) speaks first.
        desc.retry_opts.max_retry = 10
        if self.parties.tls:
            _configure_tls(desc, self.parties.tls)
        # create_brpc's retries are counted, not timed (a failing TLS handshake makes each one slow): a
        # timer enforces the deadline, and cannot interrupt the C++ call, so it ends the process.
        deadline = threading.Timer(self.parties.connect_timeout_s + 5, self.on_peer_failure, [
            f"{self.describe()} could not connect to the other parties within "
            f"{self.parties.connect_timeout_s:.0f} s (a peer is not running or unreachable, or the TLS "
            f"certificates do not match{'; see ' + self.log_path if self.log_path else ''})"])
        deadline.daemon = True
        deadline.start()
        try:
            self.link = libspu.link.create_brpc(desc, self.rank)
        except Exception as exc:
            raise PartyError(f"{self.describe()} could not connect to the other parties within "
                             f"{self.parties.connect_timeout_s:.0f} s", [_short(exc)]) from exc
        finally:
            deadline.cancel()
        self.hb_link = self.link.spawn()
        self.heartbeat = Heartbeat(self.hb_link, self.rank, self.world, self.parties.heartbeat_interval_s,
                                   self.parties.heartbeat_timeout_s, self._peer_failed)
        self.heartbeat.start()
        self.runtime = api.Runtime(self.link, runtime_config(self.config, profile=self.profile_enabled))
        self.io = api.Io(self.world, runtime_config(self.config))
        self.timings["connect"] = time.perf_counter() - start

    def _peer_failed(self, peer: int, reason: str) -> None:
        self.on_peer_failure(f"{self.describe(peer)} failed: {reason}")

    @staticmethod
    def _die(message: str) -> None:
        # SPU may be blocked inside a protocol step waiting for the dead peer: leave without unwinding it.
        print(f"cipherdm party: error: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_FAILED)

    # -- messages --------------------------------------------------------------------------------------------

    def send(self, peer: int, data: bytes) -> None:
        self.link.send(peer, data)
        self.traffic.add(data)

    def recv(self, peer: int) -> bytes:
        try:
            return self.link.recv(peer)
        except Exception as exc:
            raise PartyError(f"{self.describe()} received nothing from {self.describe(peer)}",
                             [_short(exc)]) from exc

    def handshake(self, hello: dict) -> None:
        """Exchange ``hello`` (see :func:`hello`) with every peer; raise if any field differs anywhere."""
        start = time.perf_counter()
        mine = pack({"hello": hello})
        for r in range(self.world):
            if r != self.rank:
                self.send(r, mine)
        problems = []
        for r in range(self.world):
            if r != self.rank:
                theirs = unpack(self.recv(r))[0]["hello"]
                problems += compare_hello(hello, theirs, self.rank, r)
        self.timings["handshake"] = time.perf_counter() - start
        if problems:
            raise HandshakeError(f"{self.describe()} refuses to run: the parties' programs differ", problems)

    def _send_share(self, peer: int, name: str, share) -> None:
        self.send(peer, pack({"share": name, "chunks": len(share.share_chunks)}, [share.meta]))
        for chunk in share.share_chunks:
            self.send(peer, chunk)

    def _recv_share(self, peer: int, name: str):
        from spu import libspu

        header, blobs = unpack(self.recv(peer))
        if header.get("share") != name:
            raise PartyError(f"{self.describe()} expected the share of '{name}' from {self.describe(peer)} "
                             f"but got {header}")
        share = libspu.Share()
        share.meta = blobs[0]
        share.share_chunks = [self.recv(peer) for _ in range(header["chunks"])]
        return share

    def share_secret(self, name: str, value: np.ndarray | None, owner: int) -> None:
        """Secret-share ``value`` (given on ``owner`` only) into the runtime variable ``name`` on every party."""
        from spu import libspu

        if self.rank == owner:
            shares = self.io.make_shares(np.asarray(value), libspu.Visibility.VIS_SECRET)
            for r in range(self.world):
                if r != self.rank:
                    self._send_share(r, name, shares[r])
            self.runtime.set_var(name, shares[self.rank])
        else:
            self.runtime.set_var(name, self._recv_share(owner, name))

    def share_public(self, name: str, value: np.ndarray | None, source: int) -> None:
        """A public value: ``source`` sends it in the clear, every party encodes it locally (no sharing)."""
        from spu import libspu

        if self.rank == source:
            value = np.asarray(value)
            meta, data = array_to_bytes(value)
            for r in range(self.world):
                if r != self.rank:
                    self.send(r, pack({"public": name, **meta}, [data]))
        else:
            header, blobs = unpack(self.recv(source))
            if header.get("public") != name:
                raise PartyError(f"{self.describe()} expected public '{name}' from {self.describe(source)}, "
                                 f"got {header}")
            value = array_from_bytes(header, blobs[0])
        self.runtime.set_var(name, self.io.make_shares(value, libspu.Visibility.VIS_PUBLIC)[self.rank])

    # -- running ---------------------------------------------------------------------------------------------

    def run(self, executable):
        """Run one executable on the variables in the runtime; returns this party's profile of it (or None)."""
        start = time.perf_counter()
        try:
            self.runtime.run(executable)
        except Exception as exc:
            raise PartyError(f"{self.describe()}: the secure execution of '{executable.name}' failed",
                             [_short(exc)]) from exc
        self.timings["run"] = self.timings.get("run", 0.0) + time.perf_counter() - start
        return self._new_profile()

    def _new_profile(self):
        if not (self.profile_enabled and self.log_path):
            return None
        from runtime.spu_profile import parse_log

        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(self._log_offset)
            text = f.read()
            self._log_offset = f.tell()
        blocks = [b for b in parse_log(text) if b.complete]
        return blocks[-1] if blocks else None

    def reveal(self, names: list[str], to: int) -> dict[str, np.ndarray] | None:
        """Open the secret variables ``names`` to party ``to`` only; returns them there, None elsewhere."""
        if self.rank != to:
            for name in names:
                self._send_share(to, name, self.runtime.get_var(name))
            return None
        result = {}
        for name in names:
            shares = [None] * self.world
            shares[self.rank] = self.runtime.get_var(name)
            for r in range(self.world):
                if r != self.rank:
                    shares[r] = self._recv_share(r, name)
            result[name] = np.asarray(self.io.reconstruct(shares))
        return result

    def rename(self, old: str, new: str) -> None:
        self.runtime.set_var(new, self.runtime.get_var(old))
        self.runtime.del_var(old)

    def delete(self, name: str) -> None:
        self.runtime.del_var(name)

    def finish(self) -> None:
        """Leave together: wait for every party, exchange goodbyes, then stop both links. Each step is
        collective, so nobody's last message (or its acknowledgement) goes to a party that is gone."""
        if self.link is None:
            return
        self.link.barrier()
        if self.heartbeat:
            self.heartbeat.stop()
        # The heartbeat sub-link shares the main link's channels (stopping either stops both; a second
        # stop_link fails with "Invalid argument"): one stop waits for every message's acknowledgement.
        self.link.stop_link()
        self.link = None
        # A peer may still wait for brpc's response to the last message it sent here; a process that exits
        # at once drops it, and the peer's retries then end that peer with exit code 255. Linger a moment.
        time.sleep(LINGER_S)

    def close(self) -> None:
        """After an error: stop watching. The process should exit now (peers learn of it by heartbeats)."""
        if self.heartbeat:
            self.heartbeat.stopped.set()


def _configure_tls(desc, tls: TlsConfig) -> None:
    desc.enable_ssl = True
    for opts in (desc.server_ssl_opts, desc.client_ssl_opts):
        opts.cert.certificate_path = tls.cert
        opts.cert.private_key_path = tls.key
        if tls.ca:
            opts.verify.ca_file_path = tls.ca
            opts.verify.verify_depth = 1


# ---------------------------------------------------------------------------------------------------------------
# Handshake contents


def hello(artifact, executable, parties: PartiesConfig) -> dict:
    import spu
    return {
        "artifact_digest": artifact.digest,
        "program_sha256": _sha(executable.SerializeToString()),
        "spu_version": spu.__version__,
        "config": artifact.manifest["config"],
        "rewrites": artifact.manifest["rewrites"],
        "inputs": artifact.manifest["inputs"],
        "outputs": artifact.manifest["outputs"],
        "roles": parties.roles,
        "addresses": parties.addresses,
        "tls": parties.tls is not None,
    }


def compare_hello(mine: dict, theirs: dict, my_rank: int, their_rank: int) -> list[str]:
    problems = []
    who = f"party {their_rank}"
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if a == b:
            continue
        if key in ("inputs", "outputs") and isinstance(a, list) and isinstance(b, list):
            problems += _compare_specs(key, a, b, my_rank, their_rank)
        elif key in ("artifact_digest", "program_sha256"):
            problems.append(f"{key.replace('_', ' ')}: party {my_rank} has {str(a)[:16]}..., {who} has "
                            f"{str(b)[:16]}...")
        else:
            problems.append(f"{key}: party {my_rank} has {json.dumps(a)}, {who} has {json.dumps(b)}")
    return problems


def _compare_specs(key: str, mine: list, theirs: list, my_rank: int, their_rank: int) -> list[str]:
    problems = []
    a_by, b_by = {s["name"]: s for s in mine}, {s["name"]: s for s in theirs}
    for name in [s["name"] for s in mine] + [s["name"] for s in theirs if s["name"] not in a_by]:
        if name not in b_by:
            problems.append(f"{key[:-1]} '{name}' exists on party {my_rank} but not on party {their_rank}")
        elif name not in a_by:
            problems.append(f"{key[:-1]} '{name}' exists on party {their_rank} but not on party {my_rank}")
        elif a_by[name] != b_by[name]:
            diffs = [f"{k} {a_by[name].get(k)} vs {b_by[name].get(k)}" for k in sorted(set(a_by[name]) |
                     set(b_by[name])) if a_by[name].get(k) != b_by[name].get(k)]
            problems.append(f"{key[:-1]} '{name}' differs between party {my_rank} and party {their_rank}: "
                            + ", ".join(diffs))
    if not problems:
        problems.append(f"{key} are in a different order on party {my_rank} and party {their_rank}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The whole life of one party


@dataclass
class PartyResult:
    rank: int
    roles: list[str]
    outputs: dict[str, np.ndarray] | None
    metrics: dict


def run_party(rank: int, parties: PartiesConfig, artifact_path, *, weights_path=None, inputs_path=None,
              output_path=None, log_path=None, on_peer_failure=None) -> PartyResult:
    """Load what this party may see, connect, agree on the program, share, run, reveal to the user."""
    from compiler.artifact import read_artifact, read_inputs, read_weights, save_npz
    from runtime.threads import limit_openmp_threads

    limit_openmp_threads(parties.parties_on_host(rank))   # before SPU loads: this party's share of the cores

    wall_start = time.perf_counter()
    roles = parties.role_of(rank)
    user, owner = parties.roles[USER], parties.roles[MODEL_OWNER]

    start = time.perf_counter()
    artifact = read_artifact(artifact_path)
    problems = []
    if MODEL_OWNER in roles and not weights_path:
        problems.append(f"party {rank} is the model owner and needs --weights")
    if USER in roles and not inputs_path and artifact.args_of(USER, PUBLIC):
        problems.append(f"party {rank} is the user and needs --inputs")
    if USER in roles and not output_path:
        problems.append(f"party {rank} receives the outputs and needs -o/--output")
    if MODEL_OWNER not in roles and weights_path:
        problems.append(f"party {rank} is not the model owner (party {owner} is): it must not be given the "
                        "weights")
    if USER not in roles and inputs_path:
        problems.append(f"party {rank} is not the user (party {user} is): it must not be given the user's inputs")
    if USER not in roles and output_path:
        problems.append(f"party {rank} does not receive the outputs (party {user} does), so it cannot write "
                        f"{output_path}")
    if problems:
        raise PartyError(f"party {rank} is not set up for its roles", problems)
    weights = read_weights(weights_path, artifact) if MODEL_OWNER in roles else {}
    inputs = read_inputs(inputs_path, artifact) if USER in roles and inputs_path else {}
    # Recompiling (another SPU version) holds the GIL for long: do it before heartbeats start.
    exe, recompiled = artifact.load_executable()
    load_time = time.perf_counter() - start

    session = PartySession(rank, parties, artifact.config, log_path=log_path, on_peer_failure=on_peer_failure)
    try:
        session.connect()
        session.handshake(hello(artifact, exe, parties))
        fault_point("share", rank)

        start = time.perf_counter()
        for arg in artifact.args:
            if arg.role == PUBLIC:
                session.share_public(arg.name, inputs.get(arg.name), source=user)
            else:
                holder = owner if arg.role == MODEL_OWNER else user
                value = weights.get(arg.name) if arg.role == MODEL_OWNER else inputs.get(arg.name)
                session.share_secret(arg.name, value, owner=holder)
        share_time = time.perf_counter() - start
        share_traffic = Traffic(session.traffic.send_bytes, session.traffic.send_actions)

        fault_point("run", rank)
        profile = session.run(exe)
        fault_point("reveal", rank)

        start = time.perf_counter()
        outputs = session.reveal([o.name for o in artifact.outputs], to=user)
        if outputs is not None:
            outputs = {o.name: outputs[o.name].astype(o.dtype, copy=False) for o in artifact.outputs}
            save_npz(output_path, outputs)
        reveal_time = time.perf_counter() - start
        session.finish()
    finally:
        session.close()

    metrics = {
        "rank": rank,
        "roles": roles,
        "address": parties.addresses[rank],
        "recompiled": recompiled,
        "load_time": load_time,
        "connect_time": session.timings.get("connect", 0.0),
        "handshake_time": session.timings.get("handshake", 0.0),
        "share_time": share_time,
        "run_time": session.timings.get("run", 0.0),
        "reveal_time": reveal_time,
        "wall_time": time.perf_counter() - wall_start,
        "peak_rss_bytes": peak_rss_bytes(),
        "link": profile.link.to_json() if profile and profile.link else None,
        "sharing": {"send_bytes": share_traffic.send_bytes, "send_actions": share_traffic.send_actions},
        "cipherdm_traffic": {"send_bytes": session.traffic.send_bytes,
                             "send_actions": session.traffic.send_actions},
        "profile": _profile_json(profile),
        "wrote_output": outputs is not None,
    }
    return PartyResult(rank, roles, outputs, metrics)


FAULT_ENV = "CIPHERDM_FAULT"


def fault_point(stage: str, rank: int) -> None:
    """Failure injection for tests: ``CIPHERDM_FAULT=RANK:STAGE:ACTION`` (ACTION kill, stop or exit) makes
    party RANK crash (SIGKILL), freeze (SIGSTOP) or fail (exit 1) just before STAGE (share, run, reveal)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want_rank, want_stage, action = spec.split(":")
    if int(want_rank) != rank or want_stage != stage:
        return
    import signal
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "exit":
        print(f"cipherdm party: injected failure before {stage}", file=sys.stderr, flush=True)
        os._exit(1)


def _profile_json(profile) -> dict | None:
    if profile is None:
        return None
    return {"execution_time": profile.execution_time,
            "ops": {layer: {name: s.__dict__ for name, s in ops.items()} for layer, ops in profile.ops.items()}}


def profile_from_json(data: dict):
    """The inverse of the ``profile`` entry of a party's metrics: a PartyProfile."""
    from runtime.spu_profile import LinkStats, OpStats, PartyProfile

    block = PartyProfile("program", data["profile"]["execution_time"] if data.get("profile") else 0.0)
    if data.get("profile"):
        block.ops = {layer: {name: OpStats(**s) for name, s in ops.items()}
                     for layer, ops in data["profile"]["ops"].items()}
    block.link = LinkStats(**data["link"]) if data.get("link") else LinkStats()
    return block


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # yacl appends a C++ stack trace: keep the message only.
    text = text.split(" stacktrace:")[0]
    return text if len(text) <= limit else text[:limit] + "..."
