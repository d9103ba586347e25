"""Bytes, rounds and per-op cost of SPU programs, read from SPU's own profile.

Two things, small on purpose:

``profile_run(fn, args, visibilities=None, config=None) -> ProfileResult``
    Compile the JAX function ``fn`` for SPU, run it in-process as three parties (three runtimes on
    ``link.create_mem`` in threads, profiling on every rank), and return the outputs with the measured cost::

        from runtime.spu_profile import profile_run
        r = profile_run(lambda x: jnp.exp(x), [np.linspace(-4, 4, 1 << 16, dtype=np.float32)])
        r.total_bytes          # bytes sent by all three parties together (stable from run to run)
        r.rounds               # largest per-party number of send actions ~ communication rounds
        r.outputs              # list of numpy arrays, reconstructed from the three output shares
        r.profile.top(5)       # the five pphlo ops that send the most bytes (OpCost records)
        r.profile.ops["MPC"]   # {kernel name: OpCost}; layers are "HLO" (pphlo ops), "HAL" and "MPC"
        r.to_json()

    ``visibilities`` is one of "secret" (default) / "public" per argument; ``config`` a
    :class:`runtime.spu_config.SecureConfig` (ABY3, FM64, 18 fraction bits by default; its ``runtime`` and
    ``compiler`` dicts pass SPU knobs such as ``fxp_exp_iters``). ``fn`` takes positional arrays and returns an
    array or a tuple/list of arrays. Input sharing and output reconstruction are not counted: only the program.

``parse_log(text) -> list[PartyProfile]`` and ``Profile.combine(blocks)``
    Parse the text SPU logs when ``enable_pphlo_profile`` / ``enable_hal_profile`` are on (one block per party
    and execution: per-op "executed N times, duration D s, send bytes, recv bytes, send actions, recv actions"
    for the pphlo, HAL and MPC layers, then "Link details: total send bytes ..."), and merge the blocks of one
    execution on the three parties into a :class:`Profile` (3-party sums, and per-party maxima for rounds).

Reading the numbers:

* An OpCost's ``send_bytes`` / ``send_actions`` / ``duration`` are summed over the parties;
  ``max_party_send_actions`` is the most any one party sent (the op's rounds, about), ``max_party_send_bytes``
  likewise. ``count`` is how often one party executed the op.
* HLO and HAL ops are not nested within their layer, so a layer's ops add up to (almost) the whole execution;
  MPC kernels are the protocol-level primitives (mul_aa, trunc_a, a2b, ...).
* ``Profile.rounds`` is the largest per-party count of send actions over the whole execution, which tracks the
  number of communication rounds (checked against injected latency on SPU 0.9.5: softmax 64x64 = 160 rounds,
  158 send actions). ``Profile.total_bytes`` is the sum of the parties' link send bytes.

SPU logs from C++ to file descriptor 1 unless ``libspu.logging.setup_logging`` sends it to a file, which is what
:func:`capture_log` does (the setting is process-wide). In one process the three parties share one log and
their blocks can interleave line by line; the parser then still gets every 3-party sum and maximum exactly
(each (layer, op) line belongs to exactly one party, and op names tell the layers apart), it only cannot say
which party sent what (``PartyProfile.interleaved`` is set). A log per process (real parties) has no such issue.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

LAYERS = ("HLO", "HAL", "MPC")

_HEADER = re.compile(r"\[Profiling\] SPU execution (?P<name>.*) completed, input processing took (?P<inp>\S+)s, "
                     r"execution took (?P<exe>\S+)s, output processing took (?P<out>\S+)s, total time (?P<tot>\S+)s")
_SECTION = re.compile(r"\b(?P<layer>HLO|HAL|MPC) profiling: total time (?P<time>\S+)")
_OP = re.compile(r"\] - (?P<name>\S+), executed (?P<count>\d+) times, duration (?P<dur>\S+)s, send bytes "
                 r"(?P<sb>\d+) recv bytes (?P<rb>\d+), send actions (?P<sa>\d+), recv actions (?P<ra>\d+)")
_LINK = re.compile(r"Link details: total send bytes (?P<sb>\d+), recv bytes (?P<rb>\d+), send actions (?P<sa>\d+), "
                   r"recv actions (?P<ra>\d+)")
_HAL_PREFIXES = ("f_", "i_", "_", "mixed_", "hal.")
_HAL_NAMES = {"seal", "reveal", "reveal_to", "dtype_cast", "constant", "zeros", "iota", "epsilon"}


@dataclass
class LinkStats:
    send_bytes: int = 0
    recv_bytes: int = 0
    send_actions: int = 0
    recv_actions: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class OpStats:
    """One op on one party, as SPU logs it."""
    count: int
    duration: float
    send_bytes: int
    recv_bytes: int
    send_actions: int
    recv_actions: int


@dataclass
class PartyProfile:
    """One party's profile of one execution."""
    name: str
    execution_time: float
    ops: dict[str, dict[str, OpStats]] = field(default_factory=lambda: {layer: {} for layer in LAYERS})
    link: LinkStats | None = None
    interleaved: bool = False  # lines of several parties were mixed: per-party attribution is a best guess

    @property
    def complete(self) -> bool:
        return self.link is not None


@dataclass
class OpCost:
    """One op summed over the parties of an execution."""
    name: str
    layer: str
    count: int = 0
    duration: float = 0.0
    send_bytes: int = 0
    recv_bytes: int = 0
    send_actions: int = 0
    recv_actions: int = 0
    max_party_send_bytes: int = 0
    max_party_send_actions: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Profile:
    """Cost of one execution over all parties."""
    parties: list[LinkStats]
    ops: dict[str, dict[str, OpCost]]
    execution_time: float = 0.0  # the slowest party's SPU execution time, seconds

    @property
    def total_bytes(self) -> int:
        return sum(p.send_bytes for p in self.parties)

    @property
    def rounds(self) -> int:
        """The busiest party's send actions: what latency sees. How the actions split between the parties moves
        by a few from run to run (about 3% on a 90-round program); their 3-party total does not."""
        return max((p.send_actions for p in self.parties), default=0)

    @property
    def send_actions(self) -> int:
        """Send actions summed over the parties: deterministic for a given program and inputs."""
        return sum(p.send_actions for p in self.parties)

    def top(self, n: int = 5, layer: str = "HLO", key: str = "send_bytes") -> list[OpCost]:
        return sorted(self.ops[layer].values(), key=lambda op: getattr(op, key), reverse=True)[:n]

    @classmethod
    def combine(cls, blocks: Sequence[PartyProfile]) -> "Profile":
        """Merge the blocks of one execution on every party (their order does not matter)."""
        ops: dict[str, dict[str, OpCost]] = {layer: {} for layer in LAYERS}
        for block in blocks:
            for layer, layer_ops in block.ops.items():
                for name, s in layer_ops.items():
                    c = ops[layer].setdefault(name, OpCost(name, layer))
                    c.count = max(c.count, s.count)
                    c.duration += s.duration
                    c.send_bytes += s.send_bytes
                    c.recv_bytes += s.recv_bytes
                    c.send_actions += s.send_actions
                    c.recv_actions += s.recv_actions
                    c.max_party_send_bytes = max(c.max_party_send_bytes, s.send_bytes)
                    c.max_party_send_actions = max(c.max_party_send_actions, s.send_actions)
        return cls([b.link or LinkStats() for b in blocks], ops,
                   max((b.execution_time for b in blocks), default=0.0))

    @classmethod
    def add(cls, profiles: Sequence["Profile"]) -> "Profile":
        """Cost of several executions run one after the other (for instance the steps of a sampler)."""
        parties = [LinkStats() for _ in range(max((len(p.parties) for p in profiles), default=0))]
        ops: dict[str, dict[str, OpCost]] = {layer: {} for layer in LAYERS}
        for p in profiles:
            for mine, theirs in zip(parties, p.parties):
                for k in ("send_bytes", "recv_bytes", "send_actions", "recv_actions"):
                    setattr(mine, k, getattr(mine, k) + getattr(theirs, k))
            for layer, layer_ops in p.ops.items():
                for name, s in layer_ops.items():
                    c = ops[layer].setdefault(name, OpCost(name, layer))
                    for k in ("count", "duration", "send_bytes", "recv_bytes", "send_actions", "recv_actions",
                              "max_party_send_bytes", "max_party_send_actions"):
                        setattr(c, k, getattr(c, k) + getattr(s, k))
        return cls(parties, ops, sum(p.execution_time for p in profiles))

    def to_json(self, top: int | None = None) -> dict:
        return {
            "total_bytes": self.total_bytes,
            "rounds": self.rounds,
            "send_actions": self.send_actions,
            "execution_time": self.execution_time,
            "parties": [p.to_json() for p in self.parties],
            "ops": {layer: [op.to_json() for op in self.top(top or len(ops), layer)]
                    for layer, ops in self.ops.items()},
        }


def parse_log(text: str) -> list[PartyProfile]:
    """Every profile block in an SPU log, in the order their headers appear."""
    blocks: list[PartyProfile] = []
    open_blocks: list[tuple[PartyProfile, list[str | None]]] = []  # (block, [current section])
    known_layer: dict[str, str] = {}

    for line in text.splitlines():
        if "printProfilingData" not in line and "Link details" not in line and "SPU execution" not in line:
            continue
        m = _HEADER.search(line)
        if m:
            block = PartyProfile(m["name"], float(m["exe"]))
            if open_blocks:
                block.interleaved = True
                for other, _ in open_blocks:
                    other.interleaved = True
            blocks.append(block)
            open_blocks.append((block, [None]))
            continue
        m = _SECTION.search(line)
        if m:
            previous = {"HLO": None, "HAL": "HLO", "MPC": "HAL"}[m["layer"]]
            state = _first(open_blocks, lambda b, s: s[0] == previous)
            if state:
                state[1][0] = m["layer"]
            continue
        m = _LINK.search(line)
        if m:
            state = _first(open_blocks, lambda b, s: s[0] == "MPC") or _first(open_blocks, lambda b, s: True)
            if state:
                state[0].link = LinkStats(int(m["sb"]), int(m["rb"]), int(m["sa"]), int(m["ra"]))
                open_blocks.remove(state)
            continue
        m = _OP.search(line)
        if m and open_blocks:
            name = m["name"]
            stats = OpStats(int(m["count"]), float(m["dur"]), int(m["sb"]), int(m["rb"]), int(m["sa"]), int(m["ra"]))
            sections = {s[0] for _, s in open_blocks} - {None}
            if name.startswith("pphlo."):
                layer = "HLO"
            elif len(sections - {"HLO"}) == 1:
                layer = next(iter(sections - {"HLO"}))
                known_layer.setdefault(name, layer)
            else:
                layer = known_layer.get(name) or _guess_layer(name)
            state = (_first(open_blocks, lambda b, s: s[0] == layer and name not in b.ops[layer])
                     or _first(open_blocks, lambda b, s: name not in b.ops[layer])
                     or open_blocks[0])
            state[0].ops[layer][name] = stats
    return blocks


def _first(states, predicate):
    return next((s for s in states if predicate(s[0], s[1])), None)


def _guess_layer(name: str) -> str:
    return "HAL" if name.startswith(_HAL_PREFIXES) or name in _HAL_NAMES else "MPC"


def group_executions(blocks: Sequence[PartyProfile], world_size: int = 3) -> list[Profile]:
    """Blocks of one shared log (in-process parties), ``world_size`` consecutive blocks per execution."""
    complete = [b for b in blocks if b.complete]
    if len(complete) % world_size:
        raise ValueError(f"the log holds {len(complete)} complete profile blocks, not a multiple of {world_size}")
    return [Profile.combine(complete[i:i + world_size]) for i in range(0, len(complete), world_size)]


# ---------------------------------------------------------------------------------------------------------------
# Capturing SPU's log

_LOG_LOCK = threading.RLock()
_LOG_DIR: str | None = None


def redirect_log(path: str | os.PathLike) -> None:
    """Send SPU's (process-wide) C++ log to ``path`` instead of file descriptor 1."""
    from spu.libspu import logging as spu_logging

    opts = spu_logging.LogOptions()
    opts.enable_console_logger = False
    opts.system_log_path = str(path)
    # Rotation would move part of a long profile to path.1: make it practically never happen.
    opts.max_log_file_size = 1 << 40
    opts.max_log_file_count = 1
    spu_logging.setup_logging(opts)


@contextlib.contextmanager
def capture_log():
    """``with capture_log() as read: ...; text = read()``: SPU's log while the block runs, in this process."""
    global _LOG_DIR
    with _LOG_LOCK:
        if _LOG_DIR is None:
            _LOG_DIR = tempfile.mkdtemp(prefix="cipherdm-spu-log-")
        fd, path = tempfile.mkstemp(suffix=".log", dir=_LOG_DIR)
        os.close(fd)
        redirect_log(path)

        def read() -> str:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        try:
            yield read
        finally:
            # SPU keeps the file open until the next redirect; an unlinked file costs nothing.
            with contextlib.suppress(OSError):
                os.unlink(path)


# ---------------------------------------------------------------------------------------------------------------
# In-process three-party runs


@dataclass
class ProfileResult:
    outputs: list[np.ndarray]
    profile: Profile
    wall_time: float          # seconds for the three parties' run (not compile, sharing or reconstruction)
    compile_time: float = 0.0

    @property
    def total_bytes(self) -> int:
        return self.profile.total_bytes

    @property
    def rounds(self) -> int:
        return self.profile.rounds

    def to_json(self, top: int | None = 20) -> dict:
        return {"wall_time": self.wall_time, "compile_time": self.compile_time, **self.profile.to_json(top)}


def run_parties(executable, rank_inputs: Sequence[Sequence], config=None, *, profile: bool = True,
                keep_outputs: bool = True):
    """Run ``executable`` as ``world_size`` in-process parties over memory links, one thread per party.

    ``rank_inputs[rank]`` holds that party's ``libspu.Share`` for each input of the executable, in order.
    Returns ``(output shares per rank, Profile or None, wall seconds)``. Raises the first party's error.
    """
    from spu import api, libspu
    from runtime.spu_config import SecureConfig, runtime_config

    config = config or SecureConfig()
    world = config.world_size
    desc = libspu.link.Desc()
    for rank in range(world):
        desc.add_party(f"party{rank}", f"thread_{rank}")
    rc = runtime_config(config, profile=profile)
    results: list = [None] * world
    errors: list = [None] * world

    def party(rank: int) -> None:
        try:
            lctx = libspu.link.create_mem(desc, rank)
            rt = api.Runtime(lctx, libspu.RuntimeConfig(rc))
            for name, share in zip(executable.input_names, rank_inputs[rank]):
                rt.set_var(name, share)
            rt.run(executable)
            results[rank] = [rt.get_var(name) for name in executable.output_names] if keep_outputs else []
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors[rank] = exc

    with capture_log() if profile else contextlib.nullcontext() as read:
        start = time.perf_counter()
        threads = [threading.Thread(target=party, args=(r,), name=f"spu-party{r}", daemon=True)
                   for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        for exc in errors:
            if exc is not None:
                raise exc
        prof = None
        if profile:
            executions = group_executions(parse_log(read()), world)
            prof = executions[-1] if executions else Profile([LinkStats() for _ in range(world)],
                                                             {layer: {} for layer in LAYERS})
    return results, prof, wall


def compile_jax(fn: Callable, args: Sequence, visibilities: Sequence, config=None, name: str = "fn"):
    """``(executable, output tree)`` for ``fn`` on these arguments; visibilities are "secret" or "public"."""
    import jax
    from spu import api, libspu
    from runtime.spu_config import SecureConfig, compiler_options

    config = config or SecureConfig()
    specs = [jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(np.asarray(a).dtype)) for a in args]
    from runtime import fxp_scale
    with fxp_scale.fraction_bits(config.fxp_bits):
        lowered = jax.jit(fn, keep_unused=True).lower(*specs)
    out_tree = jax.tree_util.tree_structure(lowered.out_info)
    n_out = out_tree.num_leaves
    src = libspu.CompilationSource(libspu.SourceIRType.STABLEHLO, lowered.as_text(),
                                   [visibility(v) for v in visibilities])
    code = api.compile(src, compiler_options(config))
    exe = libspu.Executable(name, [f"in{i}" for i in range(len(args))], [f"out{i}" for i in range(n_out)], code)
    return exe, out_tree


def visibility(v):
    from spu import libspu
    if isinstance(v, libspu.Visibility):
        return v
    try:
        return {"secret": libspu.Visibility.VIS_SECRET, "public": libspu.Visibility.VIS_PUBLIC}[str(v).lower()]
    except KeyError:
        raise ValueError(f"visibility must be 'secret' or 'public', not {v!r}") from None


def profile_run(fn: Callable, args: Sequence, visibilities: Sequence | None = None, config=None) -> ProfileResult:
    """Run ``fn(*args)`` as three in-process SPU parties with profiling on every rank (see the module docs)."""
    import jax
    from spu import api
    from runtime.spu_config import SecureConfig, runtime_config

    config = config or SecureConfig()
    args = [np.asarray(a) for a in args]
    visibilities = list(visibilities or ["secret"] * len(args))
    if len(visibilities) != len(args):
        raise ValueError(f"{len(visibilities)} visibilities for {len(args)} arguments")
    start = time.perf_counter()
    exe, out_tree = compile_jax(fn, args, visibilities, config, getattr(fn, "__name__", "fn").strip("<>"))
    compile_time = time.perf_counter() - start
    io = api.Io(config.world_size, runtime_config(config))
    shares = [io.make_shares(np.asarray(a, dtype=jax.dtypes.canonicalize_dtype(a.dtype)), visibility(v))
              for a, v in zip(args, visibilities)]
    rank_inputs = [[s[rank] for s in shares] for rank in range(config.world_size)]
    results, prof, wall = run_parties(exe, rank_inputs, config, profile=True)
    outputs = [np.asarray(io.reconstruct(list(party_shares))) for party_shares in zip(*results)]
    return ProfileResult(outputs, prof, wall, compile_time)
