"""cipherdm party: run one of the three compute parties (one process per host)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
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
    from compiler.errors import CipherdmError
    from runtime.party import EXIT_PEER_FAILED, PartiesConfig, run_party

    status_path = args.status_out

    def write_status(status: dict) -> None:
        if status_path:
            tmp = f"{status_path}.tmp"
            Path(tmp).write_text(json.dumps(status))
            os.replace(tmp, status_path)

    def peer_failed(message: str) -> None:
        print(f"cipherdm party: error: {message}", file=sys.stderr, flush=True)
        write_status({"rank": args.rank, "ok": False, "error": message, "peer_failure": True})
        os._exit(EXIT_PEER_FAILED)

    def terminated(signum, frame):
        write_status({"rank": args.rank, "ok": False, "error": f"party {args.rank} was stopped by signal "
                      f"{signal.Signals(signum).name}"})
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    log_path = args.spu_log or f"{args.program}.party{args.rank}.log"
    try:
        parties = PartiesConfig.load(args.parties)
        result = run_party(args.rank, parties, args.program, weights_path=args.weights, inputs_path=args.inputs,
                           output_path=args.output, log_path=log_path, on_peer_failure=peer_failed)
    except CipherdmError as exc:
        write_status({"rank": args.rank, "ok": False, "error": str(exc), "kind": type(exc).__name__})
        raise
    except BaseException as exc:
        write_status({"rank": args.rank, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()})
        raise
    if args.metrics:
        from compiler.artifact import atomic_output
        with atomic_output(args.metrics) as tmp:
            Path(tmp).write_text(json.dumps(result.metrics, indent=2))
    write_status({"rank": args.rank, "ok": True, "metrics": result.metrics})
    m = result.metrics
    link = m["link"] or {}
    print(f"party {args.rank} ({', '.join(result.roles) or 'compute'}): run {m['run_time']:.2f} s, sent "
          f"{link.get('send_bytes', 0) / 2**20:.2f} MiB in {link.get('send_actions', 0)} send actions"
          + (f", wrote {args.output}" if result.outputs is not None else ""), flush=True)
    return 0
