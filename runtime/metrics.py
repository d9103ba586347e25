"""Run metrics: one JSON document per run (``--metrics``) and the short table printed after it.

Keys (all modes): ``mode``, ``program``, ``rewrites``, ``config``, ``wall_time`` (the whole command),
``load_time`` (reading / recompiling the executable), ``run_time`` (the SPU execution, slowest party).
Secure modes add ``total_bytes`` (the three parties' SPU link send bytes: stable from run to run), ``rounds``
(the largest per-party number of send actions, about the communication rounds), ``parties`` (per party: roles,
SPU link bytes and actions, input-sharing bytes cipherdm sent, peak resident memory) and ``ops`` (per layer
"HLO" / "HAL" / "MPC", ops sorted by 3-party send bytes, from SPU's own profile).
"""

from __future__ import annotations

import json

from runtime.spu_profile import Profile

MiB = float(1 << 20)


def secure_metrics(mode: str, artifact, profile: Profile, *, wall_time: float, load_time: float,
                   run_time: float, parties: list[dict], top: int = 25) -> dict:
    return {
        "mode": mode,
        "program": artifact.path,
        "name": artifact.name,
        "rewrites": artifact.manifest["rewrites"],
        "config": artifact.manifest["config"],
        "wall_time": wall_time,
        "load_time": load_time,
        "run_time": run_time,
        "total_bytes": profile.total_bytes,
        "rounds": profile.rounds,
        "parties": parties,
        "ops": {layer: [op.to_json() for op in profile.top(top, layer)] for layer in profile.ops},
    }


def plaintext_metrics(artifact, *, wall_time: float, load_time: float, run_time: float) -> dict:
    return {"mode": "plaintext", "program": artifact.path, "name": artifact.name,
            "rewrites": artifact.manifest["rewrites"], "config": artifact.manifest["config"],
            "wall_time": wall_time, "load_time": load_time, "run_time": run_time}


def render_table(metrics: dict, top: int = 5) -> str:
    lines = [f"mode {metrics['mode']}: wall {metrics['wall_time']:.2f} s, load {metrics['load_time']:.2f} s, "
             f"run {metrics['run_time']:.2f} s"]
    if "total_bytes" not in metrics:
        return "\n".join(lines)
    lines.append(f"{'party':<6}{'roles':<20}{'sent MiB':>10}{'send actions':>14}{'sharing MiB':>13}"
                 f"{'peak RSS MiB':>14}")
    for p in metrics["parties"]:
        rss = p.get("peak_rss_bytes")
        roles = "?" if p.get("roles") is None else ", ".join(p["roles"]) or "compute"
        lines.append(f"{p['rank']:<6}{roles:<20}"
                     f"{p['send_bytes'] / MiB:>10.2f}{p['send_actions']:>14}"
                     f"{p.get('sharing_send_bytes', 0) / MiB:>13.2f}"
                     f"{(rss / MiB if rss else float('nan')):>14.0f}")
    lines.append(f"3-party SPU traffic {metrics['total_bytes'] / MiB:.2f} MiB, about {metrics['rounds']} rounds")
    ops = [op for op in metrics["ops"].get("HLO", []) if op["send_bytes"]][:top]
    if ops:
        lines.append(f"top ops by bytes: " + "; ".join(
            f"{op['name'].removeprefix('pphlo.')} {op['send_bytes'] / MiB:.2f} MiB, "
            f"{op['max_party_send_actions']} rounds" for op in ops))
    return "\n".join(lines)


def write_metrics(path, metrics: dict) -> None:
    from pathlib import Path

    from compiler.artifact import atomic_output
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n")
