"""Export the end-to-end test fixtures: tiny diffusion models, both torch exporters, opsets 17 to 23.

    python -m models.export_fixtures [--out tests/fixtures] [--only KIND ...]   # export (needs torch, diffusers)
    python -m models.export_fixtures --op-report docs/op-coverage.md            # op report from the fixtures

For every shipped fixture ``<kind>.<variant>.onnx`` the script writes ``<kind>.<variant>.npz`` with the example
inputs (keyed by ONNX input name) and onnxruntime's outputs (keys ``out:<output name>``), so tests need no torch,
and ``manifest.json`` describing every fixture and every export that was tried and not shipped (and why).

An export is shipped only when it is at the opset that was asked for, passes ``onnx.checker`` (full check),
loads in onnxruntime and matches torch within ``TOLERANCE``. The dynamo exporter at opset 17 is tried for every
model and never shipped: it exports at 18 and down-converts, which is either invalid or silently stays at 18
(see /work/shared/notes/onnx-exports.md); the manifest records what happened for each model.

The op report needs only onnx: it reads the manifest and the shipped files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures"
OUTPUT_NAME = "output"
TOLERANCE = 1e-4
SIZE_LIMIT = 1 << 20
DROPPED_METADATA = {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy"}

# variant -> (exporter, opset)
VARIANTS = {
    "ts17": ("torchscript", 17),
    "dynamo17": ("dynamo", 17),
    "dynamo18": ("dynamo", 18),
    "dynamo20": ("dynamo", 20),
    "dynamo23": ("dynamo", 23),
}

# What is shipped. Every construct appears with both exporters; opsets 17, 18, 20 and 23 all appear, and every
# opset-dependent spelling is covered: InstanceNormalization (<=20) vs GroupNormalization (21+), MatMul/Softmax
# attention vs the Attention op (23), Softplus/Tanh vs Mish, Erf vs Gelu (20+), Split with and without
# num_outputs, LayerNormalization at 17 (TorchScript) and later.
MATRIX = {
    "unet2d_attn": ["ts17", "dynamo18", "dynamo23"],
    "unet2d_mish": ["ts17", "dynamo18"],
    "unet2d_gelu": ["ts17", "dynamo20"],
    "unet2d_fourier": ["ts17", "dynamo20"],
    "unet2d_cond": ["ts17", "dynamo18", "dynamo23"],
    "vae_decoder": ["ts17", "dynamo20"],
    "dit_block": ["ts17", "dynamo18", "dynamo20", "dynamo23"],
}
# Tried for every model, recorded in the manifest, never shipped.
PROBES = ["dynamo17"]
VALID_PROBE = "valid probe"

# The benchmark's diffusers model (docs/bench.md): not a test fixture (too slow for the default suite), shipped
# in models/ with its inputs and a manifest entry of its own.
# Benchmark models (not test fixtures): the 32x32 one is shipped in models/; the full-size one (143 MB) is
# exported on demand by `make bench-large` into out/bench-models/.
BENCH_MODELS = {
    "unet2d_attn_32": {"variant": "ts17", "out": REPO / "models"},
    "ddpm_cifar10": {"variant": "ts17", "out": REPO / "out" / "bench-models", "calibration_cases": 8},
}

# One dynamic-batch variant for the inspect/--input-shape tests: TorchScript exporter, dynamic axis 0.
DYNAMIC = {"kind": "unet2d_attn", "name": "unet2d_attn_dynamic.ts17", "opset": 17}


# ----------------------------------------------------------------------------------------------------- export

class ExportRejected(Exception):
    """The export ran but is not usable as a fixture (invalid, wrong opset, wrong numbers...)."""


def _quiet():
    """Silence the exporters' progress prints and deprecation warnings (kept in the returned buffer)."""
    stack = contextlib.ExitStack()
    buffer = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(buffer))
    stack.enter_context(contextlib.redirect_stderr(buffer))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    # torch.onnx logs through `logging` with handlers bound to the real stderr (torchvision not installed, ...).
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack, buffer


def export(module, args, input_names, exporter: str, opset: int, dynamic_axes=None) -> onnx.ModelProto:
    import torch

    stack, log = _quiet()
    try:
        with stack, torch.no_grad():
            if exporter == "torchscript":
                buf = io.BytesIO()
                torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
                                  output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True)
                return onnx.load_from_string(buf.getvalue())
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=input_names,
                                        output_names=[OUTPUT_NAME], optimize=True)
            return program.model_proto
    except Exception as exc:
        tail = " ".join(log.getvalue().split())[-300:]
        raise ExportRejected(f"export failed: {_short(exc)}" + (f" (log: ...{tail})" if tail else "")) from exc


def strip_bulky_metadata(model: onnx.ModelProto) -> int:
    """Drop dynamo's per-node stack traces, FX node text and class lists; keep ``namespace`` and name scopes.

    The dropped keys hold more than half of a dynamo file's bytes and absolute paths of the exporting machine;
    ``namespace`` (module path and class of every node) is what rewrite reports use. Returns bytes removed.
    """
    before = model.ByteSize()
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            kept = [(p.key, p.value) for p in node.metadata_props if p.key not in DROPPED_METADATA]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                for key, value in kept:
                    node.metadata_props.add(key=key, value=value)
            for attr in node.attribute:
                stack.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))
    return before - model.ByteSize()


def default_opset(model: onnx.ModelProto) -> int:
    return next(imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx"))


def run_onnxruntime(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def validate(model: onnx.ModelProto, opset: int, feeds: dict[str, np.ndarray], expected: np.ndarray
             ) -> tuple[bytes, dict[str, np.ndarray], float]:
    """Raise ExportRejected unless the export is a valid model at ``opset`` that matches torch."""
    got_opset = default_opset(model)
    if got_opset != opset:
        raise ExportRejected(f"asked for opset {opset}, the exporter produced opset {got_opset} (it exports at its "
                             f"lowest implemented opset and keeps that when down-conversion fails, e.g. for an op "
                             f"that does not exist at {opset})")
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if sorted(graph_inputs) != sorted(feeds):
        raise ExportRejected(f"graph inputs {graph_inputs} differ from the module's {list(feeds)}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ExportRejected(f"onnx.checker rejects it: {_short(exc)}") from exc
    data = model.SerializeToString()
    try:
        outputs = run_onnxruntime(data, feeds)
    except Exception as exc:
        raise ExportRejected(f"onnx.checker accepts it but onnxruntime refuses it: {_short(exc)}") from exc
    if list(outputs) != [OUTPUT_NAME]:
        raise ExportRejected(f"outputs are {list(outputs)}, expected ['{OUTPUT_NAME}']")
    got = outputs[OUTPUT_NAME]
    if got.shape != expected.shape:
        raise ExportRejected(f"onnxruntime output shape {got.shape} differs from torch's {expected.shape}")
    error = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    if not error <= TOLERANCE:
        raise ExportRejected(f"onnxruntime differs from torch by {error:.3g} (> {TOLERANCE})")
    return data, outputs, error


def _tensor_info(vi: onnx.ValueInfoProto) -> dict:
    t = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return {"name": vi.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


def export_one(kind: str, variant: str, out: Path | None, *, name: str | None = None, dynamic: bool = False
               ) -> dict:
    """Build, export and validate one model; write it (when ``out``) and return its manifest entry."""
    import torch

    from models.fixture_models import MODELS

    spec = MODELS[kind]
    exporter, opset = VARIANTS[variant]
    name = name or f"{kind}.{variant}"
    module, args, input_names = spec.build()
    with torch.no_grad():
        expected = module(*args).numpy()
    feeds = {n: a.numpy() for n, a in zip(input_names, args)}
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {n: {0: "batch"} for n in input_names + [OUTPUT_NAME]}
    model = export(module, args, input_names, exporter, opset, dynamic_axes)
    stripped = strip_bulky_metadata(model)
    data, outputs, error = validate(model, opset, feeds, expected)
    entry = {
        "name": name,
        "file": f"{name}.onnx",
        "data": f"{name}.npz",
        "kind": kind,
        "description": spec.description,
        "exporter": exporter,
        "opset": opset,
        "seed": spec.seed,
        "dynamic": dynamic,
        "inputs": [_tensor_info(vi) for vi in model.graph.input
                   if vi.name not in {t.name for t in model.graph.initializer}],
        "outputs": [_tensor_info(vi) for vi in model.graph.output],
        "example_shapes": {n: list(a.shape) for n, a in feeds.items()},
        "bytes": len(data),
        "nodes": len(model.graph.node),
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "max_abs_err_onnxruntime_vs_torch": error,
        "output_std": float(np.std(expected)),
        "notes": [],
    }
    if stripped:
        entry["notes"].append(f"removed {stripped:,} bytes of per-node metadata "
                              f"({', '.join(sorted(DROPPED_METADATA))}); kept namespace and name_scopes")
    if len(data) > SIZE_LIMIT:
        entry["notes"].append(f"larger than {SIZE_LIMIT} bytes")
    if dynamic:
        entry["notes"].append("batch (axis 0 of every input and of the output) is dynamic: give static shapes with "
                              "--input-shape / input_shapes; the .npz example uses batch "
                              f"{next(iter(feeds.values())).shape[0]}")
    if out is not None:
        (out / entry["file"]).write_bytes(data)
        arrays = dict(feeds)
        arrays.update({f"out:{k}": v for k, v in outputs.items()})
        np.savez_compressed(out / entry["data"], **arrays)
    return entry


def export_all(out: Path, kinds: list[str], probes: bool = True) -> dict:
    import torch

    import diffusers
    import onnxruntime
    import onnxscript

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    keep = [f for f in previous.get("fixtures", []) if f["kind"] not in kinds and f["name"] != DYNAMIC["name"]]
    if DYNAMIC["kind"] not in kinds:
        keep += [f for f in previous.get("fixtures", []) if f["name"] == DYNAMIC["name"]]
    stale = [f for f in previous.get("fixtures", []) if f not in keep]
    not_shipped = [r for r in previous.get("not_shipped", []) if r["kind"] not in kinds]

    fixtures = []
    jobs = [(kind, variant, True) for kind in kinds for variant in MATRIX[kind]]
    jobs += [(kind, variant, False) for kind in kinds for variant in (PROBES if probes else [])]
    for kind, variant, ship in jobs:
        exporter, opset = VARIANTS[variant]
        label = f"{kind}.{variant}"
        try:
            entry = export_one(kind, variant, out if ship else None)
        except ExportRejected as exc:
            print(f"{label}: REJECTED: {exc}", flush=True)
            not_shipped.append({"kind": kind, "exporter": exporter, "opset": opset, "reason": str(exc)})
            continue
        if ship:
            fixtures.append(entry)
            print(f"{label}: ok, {entry['bytes']:,} bytes, {entry['nodes']} nodes, "
                  f"err {entry['max_abs_err_onnxruntime_vs_torch']:.2g}", flush=True)
        else:
            not_shipped.append({"kind": kind, "exporter": exporter, "opset": opset, "reason": VALID_PROBE})
            print(f"{label}: valid but not shipped (probe)", flush=True)
    if DYNAMIC["kind"] in kinds:
        try:
            entry = export_one(DYNAMIC["kind"], "ts17", out, name=DYNAMIC["name"], dynamic=True)
            fixtures.append(entry)
            print(f"{DYNAMIC['name']}: ok, {entry['bytes']:,} bytes", flush=True)
        except ExportRejected as exc:
            print(f"{DYNAMIC['name']}: REJECTED: {exc}", flush=True)
            not_shipped.append({"kind": DYNAMIC["kind"], "exporter": "torchscript", "opset": DYNAMIC["opset"],
                                "reason": f"dynamic batch variant: {exc}"})

    probed = [r for r in not_shipped if (r["exporter"], r["opset"]) == ("dynamo", 17)]
    failed = sum(r["reason"] != VALID_PROBE for r in probed)
    for r in probed:
        if r["reason"] == VALID_PROBE:
            r["reason"] = (f"valid at opset 17 and matches torch, but not shipped: dynamo exports at 18 and "
                           f"down-converts, and that failed for {failed} of the {len(probed)} models here (see "
                           f"their entries); opset 17 is covered by the TorchScript exporter")

    names = {f["name"] for f in fixtures}
    for old in stale:
        if old["name"] not in names:
            for key in ("file", "data"):
                (out / old[key]).unlink(missing_ok=True)
    order = {k: i for i, k in enumerate(MATRIX)}
    variant_order = {v: i for i, v in enumerate(VARIANTS)}
    all_fixtures = sorted(keep + fixtures, key=lambda f: (order.get(f["kind"], 99), f["dynamic"],
                                                        variant_order.get(f["name"].rsplit(".", 1)[1], 99)))
    not_shipped.sort(key=lambda r: (order.get(r["kind"], 99), r["exporter"], r["opset"]))
    manifest = {
        "generator": "python -m models.export_fixtures",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__},
        "tolerance": TOLERANCE,
        "npz_layout": "inputs keyed by ONNX input name; onnxruntime outputs keyed 'out:<output name>'",
        "notes": [
            "shipped only when at the requested opset, accepted by onnx.checker (full_check) and onnxruntime, and "
            f"within {TOLERANCE} of torch (max abs error)",
            "dynamo at opset 17 is tried for every model and never shipped (see not_shipped)",
            "dynamo exports keep per-node metadata 'namespace' and 'pkg.torch.onnx.name_scopes'; stack traces, FX "
            "node text and class hierarchies are removed (size, and they hold the exporting machine's paths)",
            "weights are random (seeded) from diffusers configs; no downloads",
        ],
        "fixtures": all_fixtures,
        "not_shipped": not_shipped,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_bench(kind: str = "unet2d_attn_32") -> dict:
    import torch

    torch.set_num_threads(1)
    variant, out = BENCH_MODELS[kind]["variant"], BENCH_MODELS[kind]["out"]
    out.mkdir(parents=True, exist_ok=True)
    entry = export_one(kind, variant, out)
    entry["generator"] = f"python -m models.export_fixtures --bench {kind}"
    cases = BENCH_MODELS[kind].get("calibration_cases")
    if cases:
        entry["calibration"] = write_noise_calibration(out / f"{entry['name']}.calib.npz", entry, cases)
    (out / f"{entry['name']}.json").write_text(json.dumps(entry, indent=2) + "\n")
    print(f"{entry['name']}: ok, {entry['bytes']:,} bytes, {entry['nodes']} nodes, "
          f"err {entry['max_abs_err_onnxruntime_vs_torch']:.2g}", flush=True)
    return entry


def write_noise_calibration(path: Path, entry: dict, cases: int, seed: int = 1000) -> str:
    """Calibration inputs for a random-weight U-Net: unit Gaussian samples (the forward process's x_t for data in
    [-1, 1] has a std of at most 1) at timesteps spread over [999, 0]. A sampling trajectory would be the recipe
    for a trained model (`cipherdm trajectory`), but a random model's trajectory diverges (x_0 in the hundreds)."""
    rng = np.random.default_rng(seed)
    shapes = entry["example_shapes"]
    sample = rng.standard_normal((cases, *shapes["sample"])).astype(np.float32)
    steps = np.linspace(999, 0, cases).round().astype(np.int64)
    timestep = np.repeat(steps[:, None], shapes["timestep"][0], axis=1)
    np.savez_compressed(path, sample=sample, timestep=timestep)
    return (f"{path.name}: {cases} cases of unit Gaussian samples at timesteps {steps[0]}..{steps[-1]} "
            f"(seed {seed})")


# -------------------------------------------------------------------------------------------------- op report

def _attr_summary(attr: onnx.AttributeProto) -> str | None:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.data_type).name
        return f"tensor {dtype}[{','.join(map(str, value.dims))}]"
    if isinstance(value, onnx.GraphProto):
        return "graph"
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        if len(value) > 8:
            return f"list[{len(value)}]"
        return "[" + ",".join(v.decode() if isinstance(v, bytes) else (f"{v:.6g}" if isinstance(v, float)
                                                                        else str(v)) for v in value) + "]"
    return str(value)


def _schema_since(domain: str, op: str, opset: int) -> int | str:
    try:
        return onnx.defs.get_schema(op, max_inclusive_version=opset, domain=domain).since_version
    except Exception:
        return "?"


def collect_ops(fixtures_dir: Path, manifest: dict) -> tuple[dict, dict]:
    """Per fixture op histograms, and per (domain, op, opset) the attributes, input arities and users."""
    per_fixture: dict[str, Counter] = {}
    union: dict[tuple[str, str, int], dict] = {}
    for fixture in manifest["fixtures"]:
        model = onnx.load(str(fixtures_dir / fixture["file"]))
        opsets = {imp.domain or "": imp.version for imp in model.opset_import}
        default = opsets.get("", opsets.get("ai.onnx"))
        histogram: Counter = Counter()
        stack = [model.graph]
        while stack:
            graph = stack.pop()
            for node in graph.node:
                domain = "" if node.domain in ("", "ai.onnx") else node.domain
                opset = opsets.get(domain, default)
                histogram[(domain, node.op_type)] += 1
                info = union.setdefault((domain, node.op_type, opset), {
                    "count": 0, "fixtures": set(), "attrs": defaultdict(set), "arity": set()})
                info["count"] += 1
                info["fixtures"].add(fixture["name"])
                info["arity"].add(f"{len(node.input)}->{len(node.output)}")
                for attr in node.attribute:
                    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                        stack.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))
                    info["attrs"][attr.name].add(_attr_summary(attr))
        per_fixture[fixture["name"]] = histogram
    return per_fixture, union


def render_op_report(fixtures_dir: Path) -> str:
    manifest = json.loads((fixtures_dir / "manifest.json").read_text())
    per_fixture, union = collect_ops(fixtures_dir, manifest)
    rel = os.path.relpath(fixtures_dir, REPO)
    lines = [
        "# Op coverage of the end-to-end fixtures",
        "",
        f"Generated by `python -m models.export_fixtures --op-report docs/op-coverage.md` from the ONNX files in "
        f"`{rel}/` (see `{rel}/manifest.json`); do not edit by hand. Exported with "
        + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()) + ".",
        "",
        "Which of these cipherdm can lower right now: `cipherdm inspect --json FILE` (its `unsupported` list), or "
        "`pytest tests/test_fixtures_e2e.py`.",
        "",
        "## Fixtures",
        "",
        "| fixture | exporter | opset | inputs | bytes | nodes | distinct ops |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in manifest["fixtures"]:
        inputs = ", ".join(f"{i['name']} {i['dtype']}[{','.join(str(d) for d in i['shape'])}]" for i in f["inputs"])
        lines.append(f"| `{f['file']}` | {f['exporter']} | {f['opset']} | {inputs} | {f['bytes']:,} | "
                     f"{f['nodes']} | {len(per_fixture[f['name']])} |")
    lines += ["", "Models (tiny diffusers configs, seeded random weights, built in `models/fixture_models.py`):", ""]
    for kind, description in dict((f["kind"], f["description"]) for f in manifest["fixtures"]).items():
        lines.append(f"- `{kind}`: {description}")
    if manifest.get("not_shipped"):
        lines += ["", "Tried and not shipped:", ""]
        for r in manifest["not_shipped"]:
            lines.append(f"- {r['kind']}, {r['exporter']} opset {r['opset']}: {r['reason']}")

    lines += [
        "",
        "## Union of ops",
        "",
        "One row per (domain, op, model opset). `schema since` is the ONNX schema version in force at that opset "
        "(the semantics a lowering registered with `since=` must implement). `attributes seen` lists every value "
        "an attribute takes across the fixtures; `in->out` the input/output counts seen (optional inputs "
        "included when present, empty names included).",
        "",
        "| domain | op | opset | schema since | nodes | fixtures | attributes seen | in->out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (domain, op, opset), info in sorted(union.items(), key=lambda kv: (kv[0][0], kv[0][1].lower(), kv[0][2])):
        attrs = "; ".join(f"{name}={'/'.join(sorted(values))}" for name, values in sorted(info["attrs"].items()))
        lines.append(f"| {domain or 'ai.onnx'} | {op} | {opset} | {_schema_since(domain, op, opset)} | "
                     f"{info['count']} | {len(info['fixtures'])} | {attrs.replace('|', '/') or '-'} | "
                     f"{', '.join(sorted(info['arity']))} |")

    distinct = sorted({(d, op) for d, op, _ in union}, key=lambda k: (k[0], k[1].lower()))
    lines += ["", f"Distinct ops ({len(distinct)}): " + ", ".join(
        f"`{op}`" if not d else f"`{d}::{op}`" for d, op in distinct) + ".", ""]
    schemas: dict[tuple[str, str], dict[int | str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for domain, op, opset in union:
        schemas[(domain, op)][_schema_since(domain, op, opset)].add(opset)
    lines += ["ONNX schema versions in use (schema since: model opsets), what a registry key `(op, since)` must "
              "cover:", ""]
    for (domain, op), versions in sorted(schemas.items(), key=lambda kv: (kv[0][0], kv[0][1].lower())):
        ordered = sorted(versions.items(), key=lambda kv: (isinstance(kv[0], str), str(kv[0]).zfill(4)))
        body = "; ".join(f"{since}: {', '.join(map(str, sorted(opsets)))}" for since, opsets in ordered)
        lines.append(f"- `{op if not domain else domain + '::' + op}`: {body}")
    lines.append("")

    lines += ["## Op histogram per fixture", ""]
    for f in manifest["fixtures"]:
        histogram = per_fixture[f["name"]]
        body = ", ".join(f"{op if not d else d + '::' + op} {n}"
                         for (d, op), n in sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0][1])))
        lines += [f"- `{f['file']}` ({sum(histogram.values())} nodes): {body}"]
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- cli

def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export_fixtures", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture folder (default tests/fixtures)")
    parser.add_argument("--only", nargs="+", choices=list(MATRIX), help="export only these models (the manifest "
                        "keeps the others)")
    parser.add_argument("--no-probes", action="store_true", help="skip the dynamo opset-17 probes")
    parser.add_argument("--op-report", type=Path, metavar="MD", help="write the op coverage report from the "
                        "fixtures in --out (no export unless --export is also given)")
    parser.add_argument("--export", action="store_true", help="with --op-report: export first")
    parser.add_argument("--bench", nargs="?", const="unet2d_attn_32", choices=list(BENCH_MODELS), metavar="MODEL",
                        help="export only a benchmark model: " + ", ".join(
                            f"{k} (to {v['out'].relative_to(REPO)}/)" for k, v in BENCH_MODELS.items())
                        + "; default unet2d_attn_32")
    args = parser.parse_args(argv)
    if args.bench:
        export_bench(args.bench)
        return 0
    if args.op_report is None or args.export:
        export_all(args.out, args.only or list(MATRIX), probes=not args.no_probes)
    if args.op_report is not None:
        args.op_report.parent.mkdir(parents=True, exist_ok=True)
        args.op_report.write_text(render_op_report(args.out))
        print(f"wrote {args.op_report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
