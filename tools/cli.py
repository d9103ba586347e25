"""`cipherdm` console command: discovers the verbs in tools/verbs and turns user errors into one paragraph."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

import tools.verbs
from compiler.errors import CipherdmError

EXIT_USER_ERROR = 2


def _verbs():
    for info in sorted(pkgutil.iter_modules(tools.verbs.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"tools.verbs.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherdm",
        description="Compile ONNX diffusion models to three-party secure programs (SPU/ABY3) and run them.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in _verbs():
        p = sub.add_parser(verb.NAME, help=verb.HELP, description=verb.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        verb.add_arguments(p)
        p.set_defaults(_run=verb.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CipherdmError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"cipherdm {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"cipherdm {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
