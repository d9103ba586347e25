"""cipherdm inspect: check a model and list its inputs, outputs, ops and anything cipherdm cannot lower."""

from __future__ import annotations

import json

from compiler.inspection import inspect_model, render_text
from compiler.loader import parse_input_shapes

NAME = "inspect"
HELP = "check an ONNX model and report inputs, outputs, op histogram and unsupported ops"
EXIT_UNSUPPORTED = 1


def add_arguments(parser) -> None:
    parser.add_argument("model", help="path to the .onnx file (external data is read from its folder)")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix the shape of a dynamic input (repeat for several inputs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args) -> int:
    info = inspect_model(args.model, parse_input_shapes(args.input_shape))
    print(json.dumps(info, indent=2) if args.json else render_text(info))
    return 0 if info["compilable"] else EXIT_UNSUPPORTED
