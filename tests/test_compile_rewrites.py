"""`cipherdm compile` with the rewrite passes and `cipherdm report` on the program it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.artifact import read_artifact
from tests.conftest import FIXTURES
from tools.cli import main as cli

MODEL = FIXTURES / "unet2d_attn.ts17.onnx"


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile")
    data = np.load(FIXTURES / "unet2d_attn.ts17.npz")
    inputs = {k: data[k] for k in data.files if not k.startswith("out:")}
    # Two calibration cases stacked on a leading axis, as a sampling trajectory would give.
    np.savez(folder / "calib.npz", **{k: np.stack([v, v * 0.5 if v.dtype.kind == "f" else v]) for k, v in inputs.items()})
    # and three held-out ones, which the choice must not see
    np.savez(folder / "valid.npz", **{k: np.stack([v * f if v.dtype.kind == "f" else v for f in (0.75, 1.0, 1.25)])
                                      for k, v in inputs.items()})
    assert cli(["compile", str(MODEL), "-o", str(folder / "rw.cdm"), "--public", "timestep",
                "--calibration", str(folder / "calib.npz"), "--error-budget", "5e-3",
                "--validation", str(folder / "valid.npz")]) == 0
    assert cli(["compile", str(MODEL), "-o", str(folder / "direct.cdm"), "--public", "timestep", "--direct"]) == 0
    return folder


def test_report_json_lists_rewrites_with_calibration(programs, capsys):
    capsys.readouterr()
    assert cli(["report", str(programs / "rw.cdm"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == read_artifact(programs / "rw.cdm").report
    assert report["budget"] == 5e-3 and report["calibration"]["cases"] == 2
    assert {r["pattern"] for r in report["rewrites"]} >= {"silu", "group_norm", "softmax"}
    assert all(r["error_max"] <= 5e-3 for r in report["rewrites"])
    manifest = read_artifact(programs / "rw.cdm").manifest
    # SPU knobs a chosen protocol needs are part of every party's configuration.
    for key, value in report["knobs"].get("runtime", {}).items():
        assert manifest["config"]["runtime"][key] == value


def test_direct_program_reports_candidates_and_differs(programs, capsys):
    direct = read_artifact(programs / "direct.cdm")
    assert direct.report["mode"] == "direct" and direct.report["rewrites"] == []
    assert direct.digest != read_artifact(programs / "rw.cdm").digest
    assert cli(["report", str(programs / "direct.cdm")]) == 0
    assert "--direct" in capsys.readouterr().out


def test_report_html_and_markdown_to_files(programs):
    for fmt in ("md", "html"):
        target = programs / f"report.{fmt}"
        assert cli(["report", str(programs / "rw.cdm"), "--format", fmt, "-o", str(target)]) == 0
        text = target.read_text()
        assert ("<svg" in text) if fmt == "html" else ("| silu |" in text)


def test_validation_is_the_rewritten_graphs_error_on_held_out_inputs(programs, capsys):
    """The report's held-out error is the program's rewritten graph (its float semantics, on the owner's weights)
    against the original model on the validation cases, which leave the choice unchanged."""
    import zipfile

    import onnx
    import onnxruntime as ort

    artifact = read_artifact(programs / "rw.cdm")
    held = artifact.report["model_check"]["validation"]
    assert held["cases"] == 3 and held["source"].endswith("valid.npz") and len(held["per_case"]) == 3
    weights = dict(np.load(programs / "rw.weights.npz"))
    data = np.load(programs / "valid.npz")
    rewritten = onnx.load_from_string(zipfile.ZipFile(programs / "rw.cdm").read("model.onnx"))
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (rewritten, onnx.load(MODEL))]
    for i, reported in enumerate(held["per_case"]):
        case = {k: data[k][i] for k in data.files}
        got, want = (np.float64(s.run(None, {a.name: case.get(a.name, weights.get(a.name))
                                             for a in s.get_inputs()})[0]) for s in sessions)
        assert np.max(np.abs(got - want)) / np.std(want) == pytest.approx(reported, rel=1e-3)
    assert held["error"] == max(held["per_case"]) and held["met"] == (held["error"] <= 0.05)
    assert cli(["report", str(programs / "rw.cdm")]) == 0
    assert "Held-out validation" in capsys.readouterr().out


def test_bad_compile_options_are_refused(programs, tmp_path, capsys):
    assert cli(["compile", str(MODEL), "-o", str(tmp_path / "x.cdm"), "--direct",
                "--calibration", str(programs / "calib.npz")]) == 2
    assert cli(["compile", str(MODEL), "-o", str(tmp_path / "x.cdm"), "--direct",
                "--validation", str(programs / "valid.npz")]) == 2
    assert cli(["compile", str(MODEL), "-o", str(tmp_path / "x.cdm"), "--error-budget", "-1"]) == 2
    np.savez(tmp_path / "bad.npz", sample=np.zeros((3, 3), np.float32))
    assert cli(["compile", str(MODEL), "-o", str(tmp_path / "x.cdm"), "--public", "timestep",
                "--calibration", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "timestep" in err and "missing" in err and "sample" in err
    assert cli(["compile", str(MODEL), "-o", str(tmp_path / "x.cdm"), "--public", "timestep",
                "--calibration", str(programs / "calib.npz"), "--validation", str(tmp_path / "bad.npz")]) == 2
    assert "validation data does not fit" in capsys.readouterr().err
    assert not (tmp_path / "x.cdm").exists() and not (tmp_path / "x.weights.npz").exists()
