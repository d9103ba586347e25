"""parties.json parsing, the handshake comparison and the message framing (no processes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.party import (ConfigFileError, PartiesConfig, PartyError, array_from_bytes, array_to_bytes,
                           compare_hello, pack, run_party, unpack)


def test_parties_file_round_trip_and_defaults(tmp_path):
    path = tmp_path / "parties.json"
    path.write_text(json.dumps({"parties": [{"rank": 2, "address": "c:3"}, {"rank": 0, "address": "a:1"},
                                            {"rank": 1, "address": "b:2"}]}))
    parties = PartiesConfig.load(path)
    assert parties.addresses == ["a:1", "b:2", "c:3"]
    assert parties.roles == {"user": 0, "model_owner": 1} and parties.tls is None
    assert parties.describe(1) == "party 1 (model_owner, b:2)" and parties.role_of(2) == []
    parties.save(tmp_path / "again.json")
    assert PartiesConfig.load(tmp_path / "again.json").to_json() == parties.to_json()


def test_bad_parties_file_names_every_problem(tmp_path):
    path = tmp_path / "parties.json"
    path.write_text(json.dumps({"parties": [{"address": "a:1"}, {"address": "nohost"}, {"address": "c:3"}],
                                "roles": {"user": 5, "owner": 1}, "tls": {"cert": "missing.crt"}}))
    with pytest.raises(ConfigFileError) as err:
        PartiesConfig.load(path)
    text = str(err.value)
    assert "HOST:PORT" in text and "unknown role 'owner'" in text and "not a rank" in text and "key" in text
    with pytest.raises(ConfigFileError, match="does not exist"):
        PartiesConfig.load(tmp_path / "none.json")
    path.write_text(json.dumps({"parties": ["a:1", "b:2"]}))
    with pytest.raises(ConfigFileError, match="exactly three"):
        PartiesConfig.load(path)


def test_handshake_comparison_names_the_difference():
    mine = {"artifact_digest": "a" * 64, "inputs": [{"name": "x", "shape": [1, 2], "role": "user"}],
            "roles": {"user": 0, "model_owner": 1}}
    theirs = {"artifact_digest": "b" * 64, "inputs": [{"name": "x", "shape": [1, 3], "role": "user"},
                                                      {"name": "t", "shape": [1], "role": "public"}],
              "roles": {"user": 0, "model_owner": 2}}
    problems = compare_hello(mine, theirs, 0, 2)
    assert any("artifact digest" in p and "party 2" in p for p in problems)
    assert any("input 'x' differs" in p and "shape [1, 2] vs [1, 3]" in p for p in problems)
    assert any("input 't' exists on party 2 but not on party 0" in p for p in problems)
    assert any(p.startswith("roles:") for p in problems)
    assert compare_hello(mine, dict(mine), 0, 1) == []


def test_message_framing():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    meta, data = array_to_bytes(a)
    header, blobs = unpack(pack({"public": "t", **meta}, [data, b"", b"xyz"]))
    assert header["public"] == "t" and blobs[1:] == [b"", b"xyz"]
    np.testing.assert_array_equal(array_from_bytes(header, blobs[0]), a)


def test_a_party_is_refused_data_its_role_must_not_see(tmp_path):
    import onnx

    import secure_models
    from tools.cli import main as cli

    model, inputs = secure_models.tiny(np.random.default_rng(0))
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", **inputs)
    assert cli(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cdm")]) == 0
    parties = PartiesConfig(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"])
    with pytest.raises(PartyError) as err:
        run_party(2, parties, tmp_path / "m.cdm", weights_path=tmp_path / "m.weights.npz",
                  inputs_path=tmp_path / "in.npz", output_path=tmp_path / "o.npz")
    text = str(err.value)
    assert "not the model owner" in text and "not the user" in text and "does not receive the outputs" in text
    with pytest.raises(PartyError, match="needs --weights"):
        run_party(1, parties, tmp_path / "m.cdm")
