"""End to end on the exported diffusion fixtures: every fixture loads, every op has a lowering, and the plaintext
lowering matches onnxruntime within 1e-4.

The fixtures (tests/fixtures/manifest.json) are tiny diffusers models exported by both torch exporters at opsets
17-23 by ``python -m models.export_fixtures``; each ``.npz`` holds the example inputs and onnxruntime's outputs
(``out:<name>``), so nothing here needs torch.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import compiler
from tools.cli import main as cli

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
TOLERANCE = 1e-4
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = MANIFEST["fixtures"]
BY_NAME = {f["name"]: f for f in ENTRIES}
DYNAMIC = [f["name"] for f in ENTRIES if f["dynamic"]]

by_fixture = pytest.mark.parametrize("name", [f["name"] for f in ENTRIES])


def _path(entry: dict) -> str:
    return str(FIXTURES / entry["file"])


def _data(entry: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(FIXTURES / entry["data"]) as data:
        inputs = {k: data[k] for k in data.files if not k.startswith("out:")}
        outputs = {k[len("out:"):]: data[k] for k in data.files if k.startswith("out:")}
    return inputs, outputs


def _input_shapes(entry: dict) -> dict[str, tuple[int, ...]] | None:
    """Static shapes for a dynamic fixture: those of its stored example."""
    return {k: tuple(v) for k, v in entry["example_shapes"].items()} if entry["dynamic"] else None


def _shape_args(entry: dict) -> list[str]:
    return [arg for name, shape in (_input_shapes(entry) or {}).items()
            for arg in ("--input-shape", f"{name}={','.join(map(str, shape))}")]


def _onnxruntime(path: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def _unsupported_summary(unsupported: list[dict]) -> str:
    return "no lowering for " + ", ".join(f"{u['domain'] or 'ai.onnx'}::{u['op']} (opset {u['opset']}, "
                                          f"{len(u['nodes'])} nodes)" for u in unsupported)


def test_manifest_lists_exactly_the_fixture_files():
    listed = {f["file"] for f in ENTRIES} | {f["data"] for f in ENTRIES}
    kinds = tuple(f"{f['kind']}" for f in ENTRIES)
    on_disk = {p.name for p in FIXTURES.iterdir() if p.suffix in (".onnx", ".npz") and p.name.startswith(kinds)}
    assert listed - on_disk == set(), "listed in manifest.json but missing"
    assert on_disk - listed == set(), "stale fixture files not in manifest.json"


def test_fixtures_cover_both_exporters_and_every_opset():
    combos = {(f["exporter"], f["opset"]) for f in ENTRIES}
    assert {("torchscript", 17), ("dynamo", 18), ("dynamo", 20), ("dynamo", 23)} <= combos
    kinds = {f["kind"] for f in ENTRIES}
    for kind in kinds:
        assert {f["exporter"] for f in ENTRIES if f["kind"] == kind} == {"torchscript", "dynamo"}, kind
    assert DYNAMIC, "one fixture has a dynamic batch, for the --input-shape tests"


@by_fixture
def test_stored_outputs_are_onnxruntimes(name):
    entry = BY_NAME[name]
    inputs, stored = _data(entry)
    model = onnx.load(_path(entry), load_external_data=False)
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    assert opset == entry["opset"]
    assert [i["name"] for i in entry["inputs"]] == list(inputs)
    for spec in entry["inputs"]:
        assert inputs[spec["name"]].dtype == np.dtype(spec["dtype"])
        assert list(inputs[spec["name"]].shape) == entry["example_shapes"][spec["name"]]
    live = _onnxruntime(_path(entry), inputs)
    assert list(live) == list(stored) == [o["name"] for o in entry["outputs"]]
    for out_name, want in stored.items():
        assert np.all(np.isfinite(want))
        assert _max_abs_error(live[out_name], want) <= 1e-5, out_name


@by_fixture
def test_every_op_has_a_lowering(name):
    entry = BY_NAME[name]
    model = compiler.load_model(_path(entry), _input_shapes(entry), check_support=False)
    unsupported = compiler.find_unsupported(model)
    assert unsupported == [], _unsupported_summary(unsupported)


@by_fixture
def test_plaintext_lowering_matches_onnxruntime(name):
    entry = BY_NAME[name]
    inputs, stored = _data(entry)
    model = compiler.load_model(_path(entry), _input_shapes(entry))
    lowered = compiler.lower(model)
    assert [s.name for s in lowered.inputs] == list(inputs)
    assert [s.name for s in lowered.outputs] == list(stored)
    got = lowered(inputs)
    errors = {out_name: _max_abs_error(got[out_name], want) for out_name, want in stored.items()}
    assert all(e <= TOLERANCE for e in errors.values()), f"max abs error vs onnxruntime: {errors}"


@by_fixture
def test_inspect_json_reports_no_unsupported_ops(name, capsys):
    entry = BY_NAME[name]
    status = cli(["inspect", _path(entry), "--json", *_shape_args(entry)])
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["unsupported"] == [], _unsupported_summary(info["unsupported"])
    assert status == 0, err
    assert info["compilable"] is True
    assert info["opset"] == entry["opset"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in info["inputs"]] == \
        [(i["name"], entry["example_shapes"][i["name"]], i["dtype"]) for i in entry["inputs"]]


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_batch_fixture_needs_input_shapes(name, capsys):
    entry = BY_NAME[name]
    status = cli(["inspect", _path(entry), "--json"])
    _, err = capsys.readouterr()
    assert status == 2
    for spec in entry["inputs"]:
        assert spec["name"] in err
    assert "--input-shape" in err


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_batch_fixture_at_another_batch_matches_onnxruntime(name):
    # The stored example has batch 2; fixing batch 1 must give onnxruntime's batch-1 result on the same file.
    entry = BY_NAME[name]
    inputs, _ = _data(entry)
    first = {k: v[:1] for k, v in inputs.items()}
    model = compiler.load_model(_path(entry), {k: v.shape for k, v in first.items()})
    got = compiler.lower(model)(first)
    want = _onnxruntime(_path(entry), first)
    for out_name, value in want.items():
        assert _max_abs_error(got[out_name], value) <= TOLERANCE, out_name
