"""cipherdm bench: direct SPU (defaults), direct SPU (best global knobs) and cipherdm on the same inputs, side by side."""

from __future__ import annotations

import sys

NAME = "bench"
HELP = ("benchmark a model: direct SPU with defaults, with the best global SPU knobs, and cipherdm's rewrites, on the "
        "same inputs (time, 3-party bytes, rounds, error vs onnxruntime, top ops)")


def add_arguments(parser) -> None:
    parser.add_argument("model", help="path to the .onnx file")
    parser.add_argument("--inputs", metavar="IN.npz",
                        help="inputs keyed by ONNX input name (default: deterministic random inputs, public "
                             "inputs = 500)")
    parser.add_argument("--case", type=int, metavar="K",
                        help="with --inputs holding a leading axis of cases (a `cipherdm trajectory` file): "
                             "benchmark case K")
    parser.add_argument("--public", action="append", default=None, metavar="NAME",
                        help="an input every party knows (repeat; default: inputs named timestep/timesteps/t)")
    parser.add_argument("--calibration", metavar="CALIB.npz",
                        help="calibration inputs for cipherdm's rewrites (default: the benchmark inputs)")
    parser.add_argument("--error-budget", type=float, default=None, metavar="E",
                        help="cipherdm's max abs error per rewritten node (default 1e-2)")
    parser.add_argument("--model-error", type=float, default=None, metavar="R",
                        help="cipherdm's whole-model bound, max abs output error / output std on the calibration "
                             "cases (default 1e-2 here: the benchmark's accuracy target; 0 = no check)")
    parser.add_argument("--mode", choices=("sim", "local"), default="sim",
                        help="sim: in-process three parties (default); local: three party processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per program, interleaved (default 3)")
    parser.add_argument("--top", type=int, default=5, help="top ops by bytes to list per program (default 5)")
    parser.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                        help="fix the shape of a dynamic input (repeat for several inputs)")
    parser.add_argument("--json", metavar="OUT.json", help="write every measurement as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> int:
    from compiler.artifact import load_npz, output_folder_problems
    from compiler.errors import CipherdmError
    from compiler.loader import parse_input_shapes
    from tools.benchmark import render_text, run_benchmark, select_case, write_json

    from pathlib import Path

    problems, inputs, calibration, every_case = [], None, None, None
    if args.error_budget is not None and not args.error_budget > 0:
        problems.append(f"--error-budget must be positive, got {args.error_budget}")
    if args.model_error is not None and not args.model_error >= 0:
        problems.append(f"--model-error must be 0 (no check) or positive, got {args.model_error}")
    if not Path(args.model).is_file():
        problems.append(f"model file {args.model} does not exist")
    if args.repeats < 1:
        problems.append(f"--repeats must be at least 1, got {args.repeats}")
    for what, path in (("inputs", args.inputs), ("calibration data", args.calibration)):
        if path:
            try:
                data = load_npz(path, what)
            except CipherdmError as exc:
                problems.append(str(exc))
                continue
            if what == "inputs":
                inputs = data
                if args.case is not None:
                    every_case = data
                    try:
                        inputs = select_case(data, args.case, path)
                    except CipherdmError as exc:
                        problems.append(str(exc))
            else:
                calibration = data
    if args.case is not None and not args.inputs:
        problems.append("--case picks a case of --inputs, which is missing")
    problems += output_folder_problems((("--json", args.json),))
    if problems:
        raise CipherdmError("cannot run the benchmark", problems)

    def log(line: str) -> None:
        if not args.quiet:
            print(f"[bench] {line}", file=sys.stderr, flush=True)

    source = args.inputs if args.case is None else f"{args.inputs} (case {args.case})"
    # With calibration data of its own, every case of the inputs file is held out: the report says how the
    # whole-model target holds on them (on another sampling trajectory: every step), beyond the one case timed.
    held_out = every_case if calibration is not None else None
    result = run_benchmark(args.model, inputs=inputs, inputs_source=source, public=args.public,
                           validation=held_out, validation_source=args.inputs if held_out is not None else None,
                           calibration=calibration, calibration_source=args.calibration, budget=args.error_budget,
                           model_error=args.model_error, mode=args.mode, repeats=args.repeats, top=args.top,
                           input_shapes=parse_input_shapes(args.input_shape), log=log)
    if args.json:
        write_json(args.json, result)
    print(render_text(result, markdown=args.markdown), end="")
    return 0
