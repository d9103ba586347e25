"""In-process three-party run of an artifact: SPU's simulation setting (memory links, one thread per party).

Unlike SPU's stock ``Simulator`` (which turns profiling off on every rank but 0), every party profiles, so the
3-party bytes and the per-party send actions are measured (``runtime.spu_profile``). Sharing and
reconstruction happen in this process; use ``local`` mode for parties that only hold their own shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from compiler.artifact import Artifact
from compiler.spu_compile import PUBLIC
from runtime.spu_config import runtime_config
from runtime.spu_profile import Profile, run_parties


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
    from spu import api, libspu

    config = artifact.config
    start = time.perf_counter()
    exe, recompiled = artifact.load_executable()
    load_time = time.perf_counter() - start

    start = time.perf_counter()
    io = api.Io(config.world_size, runtime_config(config))
    values = {**inputs, **weights}
    rank_inputs: list[list] = [[] for _ in range(config.world_size)]
    for arg in artifact.args:
        vis = libspu.Visibility.VIS_PUBLIC if arg.role == PUBLIC else libspu.Visibility.VIS_SECRET
        shares = io.make_shares(np.asarray(values[arg.name], dtype=arg.program_dtype), vis)
        for rank in range(config.world_size):
            rank_inputs[rank].append(shares[rank])
    share_time = time.perf_counter() - start

    results, prof, run_time = run_parties(exe, rank_inputs, config, profile=profile)

    start = time.perf_counter()
    outputs = {o.name: np.asarray(io.reconstruct(list(shares)))
               for o, shares in zip(artifact.outputs, zip(*results))}
    share_time += time.perf_counter() - start
    return SimResult(outputs, prof, run_time, load_time, share_time, recompiled)
