"""What `cipherdm inspect` reports about a model: data first (a dict), rendered to text by the CLI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from compiler.loader import InputShapes, find_unsupported, graph_inputs, iter_nodes, prepare_model, read_model


def _value_info(vi: onnx.ValueInfoProto) -> dict:
    tensor_type = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else None
    return {"name": vi.name, "shape": dims, "dtype": dtype}


def inspect_model(path, input_shapes: InputShapes | None = None) -> dict:
    """Load, check and summarize a model. Raises ModelLoadError / DynamicShapeError for unusable files."""
    model = prepare_model(read_model(path), input_shapes, str(path))
    initializers = model.graph.initializer
    init_bytes = sum(int(np.prod(init.dims, dtype=np.int64)) *
                     onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize for init in initializers)
    ops = Counter((n.domain or "ai.onnx", n.op_type) for n in iter_nodes(model.graph))
    unsupported = find_unsupported(model)
    opset = next(imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx"))
    return {
        "path": str(path),
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value_info(vi) for vi in graph_inputs(model)],
        "outputs": [_value_info(vi) for vi in model.graph.output],
        "initializers": {"count": len(initializers), "bytes": init_bytes},
        "nodes": sum(ops.values()),
        "ops": {f"{op}" if domain == "ai.onnx" else f"{domain}::{op}": count
                for (domain, op), count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))},
        "unsupported": unsupported,
        "compilable": not unsupported,
    }


def render_text(info: dict) -> str:
    def shape(s):
        return "[" + ", ".join("?" if d is None else str(d) for d in s["shape"]) + "]"

    lines = [f"{info['path']}: opset {info['opset']}, IR {info['ir_version']}, {info['nodes']} nodes"
             + (f", produced by {info['producer']}" if info["producer"] else "")]
    lines.append("inputs:")
    lines += [f"  {s['name']}: {s['dtype']} {shape(s)}" for s in info["inputs"]]
    lines.append("outputs:")
    lines += [f"  {s['name']}: {s['dtype']} {shape(s)}" for s in info["outputs"]]
    init = info["initializers"]
    lines.append(f"initializers: {init['count']} ({init['bytes']:,} bytes)")
    lines.append("ops:")
    width = max((len(k) for k in info["ops"]), default=0)
    lines += [f"  {op:<{width}}  {count}" for op, count in info["ops"].items()]
    if info["unsupported"]:
        lines.append(f"unsupported ({len(info['unsupported'])}):")
        for u in info["unsupported"]:
            lines.append(f"  {u['domain'] or 'ai.onnx'}::{u['op']} (opset {u['opset']}): {', '.join(u['nodes'])}")
        lines.append("cannot be compiled")
    else:
        lines.append("every op is supported: can be compiled")
    return "\n".join(lines)
