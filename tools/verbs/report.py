"""cipherdm report: the rewrite report stored in a compiled program, as JSON, Markdown or HTML."""

from __future__ import annotations

import json
import sys

NAME = "report"
HELP = "show a program's rewrite report (what was rewritten, with which protocol, error and estimated cost)"
FORMATS = ("md", "html", "json")


def add_arguments(parser) -> None:
    parser.add_argument("program", help="a compiled program (.cdm)")
    parser.add_argument("--format", choices=FORMATS, default="md", help="output format (default md)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")


def render(report: dict, fmt: str) -> str:
    from passes.report import render_html, render_markdown

    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    return render_html(report) if fmt == "html" else render_markdown(report)


def run(args) -> int:
    from compiler.artifact import atomic_output, read_artifact

    text = render(read_artifact(args.program).report, args.format)
    if args.output:
        with atomic_output(args.output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        print(f"wrote the {args.format} report of {args.program} to {args.output}")
    else:
        sys.stdout.write(text)
    return 0
