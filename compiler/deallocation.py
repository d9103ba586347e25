"""Whether a program keeps every value alive to its end (SPU's compiler option
``disable_deallocation_insertion``).

SPU 0.9.5 parses and verifies a program's MLIR text on every run, in every party (py-spy on a chain of 4000
small secret additions: 88% of ``Runtime.run`` in the parser and the verifier). Its compiler inserts a
``pphlo.free`` after each value's last use: on the 8x8 test U-Net half of the ops and a third of the text (2894
of 5766 ops, 157 of 495 KB), and without them that program ran in 0.52 s instead of 0.66 s (three in-process
parties). On the MNIST U-Net (716 KB) the same change saved nothing measurable and took the process from 0.7 to
2.8 GB: nothing is freed until the program ends. So the frees are dropped only when all the program's values
together stay small: at most :data:`KEEP_ALL_BYTES` per party, counted from the StableHLO's result types at 16
bytes per element (an ABY3 share is two 64-bit ring elements; a public value is smaller).
"""

from __future__ import annotations

import re

import numpy as np

KEEP_ALL_BYTES = 256 << 20
SHARE_BYTES = 16
OPTION = "disable_deallocation_insertion"

_TENSOR = re.compile(r"tensor<([^>]*)>")


def _elements(tensor_type: str) -> int | None:
    """Elements of a tensor type's body ("2x3xf32", "8x2x!pphlo.secret<f32"; a scalar "f32": 1), None where a
    dimension is not a number."""
    dims = tensor_type.split("x")[:-1]
    if not all(d.isdigit() for d in dims):
        return None
    return int(np.prod([int(d) for d in dims], dtype=np.int64))


def value_elements(stablehlo: str) -> int:
    """Elements of every value the program's ops produce (the last tensor type on each ``%x = ...`` line is its
    result's; a value of several results counts its last)."""
    total = 0
    for line in stablehlo.splitlines():
        if not line.lstrip().startswith("%"):
            continue
        types = _TENSOR.findall(line)
        if not types:
            continue
        total += _elements(types[-1]) or 0
    return total


def keep_all_values(stablehlo: str, budget: int = KEEP_ALL_BYTES) -> bool:
    """Whether the program may run without SPU's frees: all its values together within ``budget`` per party."""
    return value_elements(stablehlo) * SHARE_BYTES <= budget


# The frees of the smallest values are dropped until those values together hold this much per party: they cost
# parse time on every run and free next to nothing. On the trained base-4 MNIST U-Net (SPU's parser 13% of a run's
# samples in py-spy) this drops 3278 of its 5211 frees, 177 of 915 KB of text, and a run took 5.63 s instead of
# 5.83 s (medians of three side by side, three in-process parties); 256 MiB gave the same, 1 GiB 6.8 s, and no
# frees at all 7.3 s (the whole program's values stay allocated).
SMALL_VALUES_BYTES = 64 << 20

_FREE = re.compile(r"^\s*pphlo\.free\s+%[^\s:]+\s*:\s*tensor<([^>]*)>")


def drop_small_frees(code: bytes, budget: int = SMALL_VALUES_BYTES) -> bytes:
    """SPU pphlo text without the ``pphlo.free`` of its smallest values, as many as fit ``budget`` bytes per party
    (at :data:`SHARE_BYTES` per element) kept alive to the end of the program."""
    text = code.decode()
    lines = text.split("\n")
    frees = []
    for i, line in enumerate(lines):
        m = _FREE.match(line)
        elements = _elements(m.group(1)) if m else None
        if elements is not None:
            frees.append((elements * SHARE_BYTES, i))
    dropped, held = set(), 0
    for size, i in sorted(frees):
        if held + size > budget:
            break
        held += size
        dropped.add(i)
    if not dropped:
        return code
    return "\n".join(line for i, line in enumerate(lines) if i not in dropped).encode()
