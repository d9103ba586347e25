"""The network the three parties will run on, for ranking protocols by time instead of bytes.

Under MPC a protocol costs its traffic (bytes over the link's bandwidth) and its rounds (each one a message that
waits for the link's latency). Ranking by bytes alone is right on a LAN, where a round costs a fraction of a
millisecond; over a WAN a protocol that saves megabytes with a hundred more rounds can be slower. With a network,
the per-node choice ranks candidates by

    seconds = bytes / (3 x bandwidth) + rounds x latency

(the bytes are the three parties' sum and each party has its own link, so the traffic of one party is about a
third of them; a round is one message from each party, so it waits one one-way latency). Without one (the
default) it ranks by bytes, which is also the best proxy of the time of an in-process simulation.

``parse("1gbit,10ms")`` reads ``BANDWIDTH,LATENCY``: bandwidth in bit/s with a k/m/g prefix (``100mbit``,
``1gbit``, ``10gbit``), latency in ``ms`` / ``us`` / ``s``; or a preset name (:data:`PRESETS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# one-way latency per round and bandwidth per party's link
PRESETS = {
    "lan": "10gbit,0.1ms",
    "wan": "100mbit,20ms",
}
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
PARTIES = 3


class NetworkError(ValueError):
    pass


@dataclass(frozen=True)
class Network:
    bandwidth_bits: float     # per party's link, bit/s
    latency_s: float          # one-way, per round

    def seconds(self, nbytes: float, rounds: float) -> float:
        """Estimated time of ``nbytes`` (three parties' sum) sent in ``rounds`` rounds."""
        return 8.0 * float(nbytes) / PARTIES / self.bandwidth_bits + float(rounds) * self.latency_s

    def round_in_bytes(self) -> float:
        """How many (three-party) bytes cost as much time as one round."""
        return self.latency_s * self.bandwidth_bits * PARTIES / 8.0

    def describe(self) -> str:
        return f"{_bits(self.bandwidth_bits)}/s per link, {self.latency_s * 1e3:g} ms per round"

    def to_json(self) -> dict:
        return {"bandwidth_bits_per_s": self.bandwidth_bits, "latency_s": self.latency_s,
                "round_in_bytes": self.round_in_bytes(), "description": self.describe()}

    @classmethod
    def from_json(cls, data: dict) -> "Network":
        return cls(float(data["bandwidth_bits_per_s"]), float(data["latency_s"]))


def parse(text: str) -> Network:
    """``BANDWIDTH,LATENCY`` (``1gbit,10ms``) or a preset name; one error naming everything wrong."""
    spec = PRESETS.get(str(text).strip().lower(), str(text).strip().lower())
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 2:
        raise NetworkError(f"--network {text!r}: expected BANDWIDTH,LATENCY (e.g. 1gbit,10ms) or one of "
                           f"{', '.join(PRESETS)}")
    problems = []
    bandwidth = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmg]?)(bit|bps|b)?(/s)?", parts[0])
    latency = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|us|s)", parts[1])
    if bandwidth is None or float(bandwidth.group(1)) <= 0:
        problems.append(f"bandwidth {parts[0]!r}: a positive number of bit/s with an optional k/m/g prefix "
                        "(100mbit, 1gbit)")
    if latency is None:
        problems.append(f"latency {parts[1]!r}: a number with ms, us or s (10ms)")
    if problems:
        raise NetworkError(f"--network {text!r}: " + "; ".join(problems))
    return Network(float(bandwidth.group(1)) * _PREFIX[bandwidth.group(2)],
                   float(latency.group(1)) * _TIME[latency.group(2)])


def _bits(value: float) -> str:
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g} {prefix}bit"
    return f"{value:g} bit"
