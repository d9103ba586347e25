"""OpenMP threads for SPU's matrix products.

SPU 0.9.5 multiplies shares with Eigen's GEMM, parallelised by OpenMP with a team size it picks itself (so
``OMP_NUM_THREADS`` changes nothing), but the OpenMP runtime honours ``OMP_THREAD_LIMIT``. When the parties on one
host have more threads than it has cores (three in-process parties, or three party processes, on two cores) the
teams spin-wait against each other. Measured on two cores, three in-process parties, per product:

    =====================  =========  =====  =====
    OMP_THREAD_LIMIT       unset      2      1
    [16,4704] x [4704,16]  1048 ms    92 ms  10.6 ms
    [196,196] x [196,8]    39 ms      16 ms  6.0 ms
    [64,64] x [64,64]      36 ms      15 ms  5.1 ms
    =====================  =========  =====  =====

So each party gets its share of the cores: ``cores // parties on this host``, at least 1. The OpenMP runtime reads
the limit once, when SPU's library loads, so it must be in the environment before the first ``import spu``: the
``compiler`` and ``runtime`` packages (every module that imports spu lives in them) set the default for three
parties on the host when they are imported, and a party process that is alone on its host raises it before it
loads SPU. A limit the user set is never changed.
"""

from __future__ import annotations

import os
import sys

ENV = "OMP_THREAD_LIMIT"
DEFAULT_PARTIES_ON_HOST = 3

_chosen: int | None = None   # the limit this module set (None: unset, or the user's own)


def threads_per_party(parties_on_host: int, cores: int | None = None) -> int:
    if cores is None:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(parties_on_host)))


def limit_openmp_threads(parties_on_host: int = DEFAULT_PARTIES_ON_HOST) -> int | None:
    """Set ``OMP_THREAD_LIMIT`` for ``parties_on_host`` parties sharing this host's cores, unless the user set it
    or SPU has already loaded (then it is too late: the value in force stays). Returns the limit in force, or None
    when there is none."""
    global _chosen
    current = os.environ.get(ENV)
    user_set = current is not None and (_chosen is None or current != str(_chosen))
    if user_set or "spu.libspu" in sys.modules:
        return int(current) if current and current.isdigit() else None
    _chosen = threads_per_party(parties_on_host)
    os.environ[ENV] = str(_chosen)
    return _chosen
