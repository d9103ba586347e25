"""cipherdm party: run one of the three compute parties (one process per host)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

NAME = "party"
HELP = "run one compute party of a secure program (one process per host; see parties.json)"


def add_arguments(parser) -> None:
    parser.add_argument("program", help="the compiled program (.cdm); every party needs the same one")
    parser.add_argument("--rank", type=int, required=True, choices=(0, 1, 2), help="this party's rank")
    parser.add_argument("--parties", required=True, metavar="PARTIES.json",
                        help='the three addresses and the roles: {"parties": [{"rank": 0, "address": '
                             '"host:port"}, ...], "roles": {"user": 0, "model_owner": 1}, optional "tls": '
                             '{"cert": ..., "key": ..., "ca": ...}}')
    parser.add_argument("--weights", help="the model owner's weights (.npz); only on the model owner")
    parser.add_argument("--inputs", help="the user's inputs (.npz keyed by ONNX input names); only on the user")
    parser.add_argument("-o", "--output", help="where the user writes the outputs (.npz); only on the user")
    parser.add_argument("--spu-log", help="file for SPU's log and profile (default: PROGRAM.partyR.log)")
    parser.add_argument("--metrics", help="write this party's metrics as JSON")
    # For the local-mode supervisor: a JSON status file written on success and on every failure.
    parser.add_argument("--status-out", help=argparse.SUPPRESS)


def run(args) -> int:
    """Runs the party and leaves with ``os._exit``: brpc's threads may still be inside a send or receive, and
    tearing the interpreter down around them can crash (or hang) the process after its work is done."""
    code = _run(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_on_signals(rank: int, write_status) -> None:
    """Ctrl-C and SIGTERM end the party at once, even while SPU blocks the main thread in C++ (where Python's
    own handlers would wait for it): the signals are blocked in every thread (brpc's threads, started later,
    inherit the mask) and one thread waits for them."""
    wanted = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)

    def wait() -> None:
        signum = signal.sigwait(wanted)
        name = signal.Signals(signum).name
        print(f"cipherdm party: party {rank} stopped by {name}", file=sys.stderr, flush=True)
        write_status({"rank": rank, "ok": False, "error": f"party {rank} was stopped by {name}",
                      "kind": "Signal"})
        os._exit(128 + signum)

    threading.Thread(target=wait, name="signals", daemon=True).start()


def _die_with_supervisor() -> None:
    """Under ``cipherdm run --mode local``: get SIGKILL when the supervisor dies, even by SIGKILL."""
    parent = os.environ.get("CIPHERDM_SUPERVISOR_PID")
    if not parent:
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os._exit(1)


def party_reporters(verb: str, rank, status_path: str | None):
    """(write_status, peer_failed) for a party process: the status file the supervisor polls (written atomically),
    and what to do when a peer fails (say so, record it, leave at once: brpc threads may still be running)."""
    from runtime.party import EXIT_PEER_FAILED

    def write_status(status: dict) -> None:
        if status_path:
            tmp = f"{status_path}.tmp"
            Path(tmp).write_text(json.dumps(status))
            os.replace(tmp, status_path)

    def peer_failed(message: str) -> None:
        print(f"cipherdm {verb}: error: {message}", file=sys.stderr, flush=True)
        write_status({"rank": rank, "ok": False, "error": message, "kind": "PeerFailure"})
        os._exit(EXIT_PEER_FAILED)

    return write_status, peer_failed


def _run(args) -> int:
    from compiler.errors import CipherdmError
    from runtime.party import PartiesConfig, run_party

    write_status, peer_failed = party_reporters("party", args.rank, args.status_out)
    _exit_on_signals(args.rank, write_status)
    _die_with_supervisor()
    log_path = args.spu_log or f"{args.program}.party{args.rank}.log"
    try:
        parties = PartiesConfig.load(args.parties)
        result = run_party(args.rank, parties, args.program, weights_path=args.weights, inputs_path=args.inputs,
                           output_path=args.output, log_path=log_path, on_peer_failure=peer_failed)
        if args.metrics:
            from compiler.artifact import atomic_output
            with atomic_output(args.metrics) as tmp:
                Path(tmp).write_text(json.dumps(result.metrics, indent=2))
    except CipherdmError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"cipherdm party: error: {exc}", file=sys.stderr)
        write_status({"rank": args.rank, "ok": False, "error": str(exc), "kind": type(exc).__name__})
        return 2
    except BaseException as exc:  # noqa: BLE001 - a bug: report it with its traceback, still leave cleanly
        traceback.print_exc()
        write_status({"rank": args.rank, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()})
        return 1
    write_status({"rank": args.rank, "ok": True, "metrics": result.metrics})
    m = result.metrics
    link = m["link"] or {}
    print(f"party {args.rank} ({', '.join(result.roles) or 'compute'}): run {m['run_time']:.2f} s, sent "
          f"{link.get('send_bytes', 0) / 2**20:.2f} MiB in {link.get('send_actions', 0)} send actions"
          + (f", wrote {args.output}" if result.outputs is not None else ""), flush=True)
    return 0
