"""In-process three-party runs: SPU's simulation setting (memory links, one thread per party).

Unlike SPU's stock ``Simulator`` (which turns profiling off on every rank but 0), every party profiles, so the
3-party bytes and the per-party send actions are measured (``runtime.spu_profile``). Sharing and
reconstruction happen in this process; use ``local`` mode for parties that only hold their own shares.

``run_sim(artifact, weights, inputs)`` runs a compiled program once. ``SimSession`` is the in-process
counterpart of ``runtime.party.PartySession`` for callers that chain programs on secret values::

    sim = SimSession(config)
    sim.set_secret("w", w); sim.set_public("t", t)
    profile = sim.run(exe)             # outputs stay secret in the three runtimes
    sim.rename("out", "x_t")           # local to each party, no traffic
    sim.reveal(["x_t"])                # {"x_t": array}
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from compiler.artifact import Artifact
from compiler.spu_compile import PUBLIC
from runtime.spu_config import SecureConfig, runtime_config
from runtime.spu_profile import LAYERS, LinkStats, Profile, capture_log, group_executions, parse_log


class SimSession:
    """Three SPU runtimes over memory links whose variables persist from one run to the next."""

    def __init__(self, config: SecureConfig | None = None, *, profile: bool = True):
        import threading

        from spu import api, libspu

        self.config = config or SecureConfig()
        self.world = self.config.world_size
        self.profile_enabled = profile
        self.io = api.Io(self.world, runtime_config(self.config))
        desc = libspu.link.Desc()
        for rank in range(self.world):
            desc.add_party(f"party{rank}", f"thread_{rank}")
        rc = runtime_config(self.config, profile=profile)
        self.runtimes: list = [None] * self.world

        def make(rank: int) -> None:
            self.runtimes[rank] = api.Runtime(libspu.link.create_mem(desc, rank), libspu.RuntimeConfig(rc))

        threads = [threading.Thread(target=make, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.run_time = 0.0

    def _set(self, name: str, value, visibility) -> None:
        shares = self.io.make_shares(np.asarray(value), visibility)
        for rt, share in zip(self.runtimes, shares):
            rt.set_var(name, share)

    def set_secret(self, name: str, value) -> None:
        from spu import libspu
        self._set(name, value, libspu.Visibility.VIS_SECRET)

    def set_public(self, name: str, value) -> None:
        from spu import libspu
        self._set(name, value, libspu.Visibility.VIS_PUBLIC)

    def run(self, executable) -> Profile | None:
        """Run on all three runtimes at once; returns the 3-party profile of this execution."""
        import contextlib
        import threading

        errors: list = [None] * self.world

        def party(rank: int) -> None:
            try:
                self.runtimes[rank].run(executable)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors[rank] = exc

        with capture_log() if self.profile_enabled else contextlib.nullcontext() as read:
            start = time.perf_counter()
            threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(self.world)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.run_time += time.perf_counter() - start
            for exc in errors:
                if exc is not None:
                    raise exc
            if not self.profile_enabled:
                return None
            executions = group_executions(parse_log(read()), self.world)
        return executions[-1] if executions else Profile([LinkStats() for _ in range(self.world)],
                                                         {layer: {} for layer in LAYERS})

    def reveal(self, names: list[str]) -> dict[str, np.ndarray]:
        return {name: np.asarray(self.io.reconstruct([rt.get_var(name) for rt in self.runtimes]))
                for name in names}

    def rename(self, old: str, new: str) -> None:
        for rt in self.runtimes:
            rt.set_var(new, rt.get_var(old))
            rt.del_var(old)

    def delete(self, name: str) -> None:
        for rt in self.runtimes:
            rt.del_var(name)


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]
    profile: Profile
    run_time: float       # the three parties' SPU execution, wall seconds
    load_time: float      # parsing (or recompiling) the executable
    share_time: float     # making the input shares and reconstructing the outputs
    recompiled: bool


def run_sim(artifact: Artifact, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
            profile: bool = True) -> SimResult:
    config = artifact.config
    start = time.perf_counter()
    exe, recompiled = artifact.load_executable()
    load_time = time.perf_counter() - start

    start = time.perf_counter()
    sim = SimSession(config, profile=profile)
    values = {**inputs, **weights}
    for arg in artifact.args:
        value = np.asarray(values[arg.name], dtype=arg.program_dtype)
        (sim.set_public if arg.role == PUBLIC else sim.set_secret)(arg.name, value)
    share_time = time.perf_counter() - start

    prof = sim.run(exe)

    start = time.perf_counter()
    outputs = sim.reveal([o.name for o in artifact.outputs])
    share_time += time.perf_counter() - start
    return SimResult(outputs, prof, sim.run_time, load_time, share_time, recompiled)
