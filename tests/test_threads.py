"""SPU's OpenMP thread limit (runtime/threads.py): set before SPU loads, a user's value kept, per-host shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from runtime.party import PartiesConfig
from runtime.threads import ENV, threads_per_party

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in_fresh_process(code: str, env_limit: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_limit is not None:
        env[ENV] = env_limit
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threads_per_party_shares_the_cores():
    assert threads_per_party(3, cores=2) == 1
    assert threads_per_party(3, cores=12) == 4
    assert threads_per_party(1, cores=8) == 8
    assert threads_per_party(0, cores=8) == 8


PROBE = """
import json, os, sys
import compiler
first = os.environ.get("OMP_THREAD_LIMIT")
from runtime.threads import limit_openmp_threads, threads_per_party
alone = limit_openmp_threads(1)
import spu.libspu
late = limit_openmp_threads(3)
print(json.dumps({"first": first, "alone": alone, "late": late, "env": os.environ.get("OMP_THREAD_LIMIT"),
                  "three": threads_per_party(3), "one": threads_per_party(1)}))
"""


def test_the_packages_set_the_limit_before_spu_loads_and_a_lone_party_raises_it():
    seen = _in_fresh_process(PROBE, None)
    assert seen["first"] == str(seen["three"])           # importing compiler set three parties' share
    assert seen["alone"] == seen["one"]                   # still before SPU: a party alone on its host takes all
    assert seen["late"] == seen["one"] and seen["env"] == str(seen["one"])   # SPU loaded: unchanged


def test_a_limit_the_user_set_is_kept():
    seen = _in_fresh_process(PROBE, "7")
    assert seen["first"] == "7" and seen["alone"] == 7 and seen["late"] == 7 and seen["env"] == "7"


def test_parties_on_host_counts_shared_hosts():
    local = PartiesConfig(["127.0.0.1:9100", "localhost:9101", "127.0.0.1:9102"])
    assert [local.parties_on_host(r) for r in range(3)] == [3, 3, 3]
    spread = PartiesConfig(["10.0.0.1:9100", "10.0.0.2:9100", "10.0.0.1:9101"])
    assert [spread.parties_on_host(r) for r in range(3)] == [2, 1, 2]
