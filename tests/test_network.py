"""Ranking protocols by their estimated time on a network (passes/network.py) instead of by bytes."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.protocols as protocols
from passes.calibrate import TensorStats
from passes.choose import choose
from passes.network import Network, NetworkError, parse
from tools.cli import main as cli


def test_parse_reads_bandwidth_latency_and_presets():
    net = parse("1gbit,10ms")
    assert net.bandwidth_bits == 1e9 and net.latency_s == pytest.approx(0.01)
    assert parse("250Mbit/s, 500us") == Network(250e6, 5e-4)
    assert parse("wan") == parse("100mbit,20ms")
    # 3 parties' bytes over 3 links: 3 x 1.25 MB at 1 Gbit/s is 10 ms, plus two rounds of 10 ms
    assert net.seconds(3 * 1.25e6, 2) == pytest.approx(0.03)
    assert net.round_in_bytes() == pytest.approx(3 * 1.25e6)


def test_parse_names_every_problem():
    with pytest.raises(NetworkError) as err:
        parse("fast,slow")
    assert "bandwidth 'fast'" in str(err.value) and "latency 'slow'" in str(err.value)
    with pytest.raises(NetworkError, match="BANDWIDTH,LATENCY"):
        parse("1gbit")


def _silu_stats():
    x = np.linspace(-10.0, 10.0, 65536).astype(np.float32)
    return TensorStats(-10.0, 10.0, [x])


def test_choice_ranks_by_time_on_the_network():
    """On a link where only latency counts, the SiLU of fewest rounds that meets the budget wins; by bytes (no
    network) the lightest does; both meet the budget on the calibrated values."""
    shape, budget, stats = (65536,), 1e-3, _silu_stats()

    def pick(network):
        return choose("silu", shape, {}, stats, budget, [], protocols.SpuKnobs(), 22, network)

    by_bytes, by_rounds = pick(None), pick(Network(1e15, 1.0))    # bandwidth free, a second per round
    assert by_bytes.protocol is not None and by_rounds.protocol is not None
    assert by_bytes.error["max"] <= budget and by_rounds.error["max"] <= budget
    heavy, light = by_rounds.protocol.cost(shape), by_bytes.protocol.cost(shape)
    assert heavy.rounds < light.rounds and heavy.bytes > light.bytes
    x = stats.cases[0].astype(np.float64)
    reference = x / (1.0 + np.exp(-x))
    assert np.max(np.abs(by_rounds.protocol.numpy_fn(x) - reference)) <= budget


def test_compile_refuses_a_bad_network_with_every_problem(tmp_path, capsys):
    status = cli(["compile", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "x.cdm"), "--network", "fast,1ms",
                  "--direct"])
    text = capsys.readouterr().err
    assert status == 2 and "bandwidth 'fast'" in text and "--network does not apply" in text
    assert list(tmp_path.iterdir()) == []


def test_rewrite_on_a_network_records_it_and_costs_less_time_there():
    """The unet2d_attn fixture ranked for a high-latency link: the report records the network and the estimated
    communication time of both programs on it, and the program chosen for it is no slower there (by the
    whole-model estimate) than the one ranked by bytes."""
    from passes.pipeline import rewrite
    from passes.report import render_markdown
    from tests.test_rewrite_pipeline import _fixture

    model, inputs = _fixture("unet2d_attn.ts17")
    network = Network(10e9, 0.05)
    kwargs = dict(public_inputs={"timestep"}, calibration=[inputs], budget=1e-2, model_error=0)
    by_bytes = rewrite(model, **kwargs).report
    on_network = rewrite(model, network=network, **kwargs).report
    assert by_bytes["network"] is None and on_network["network"]["latency_s"] == 0.05
    mine, theirs = on_network["model_estimate"]["rewritten"], by_bytes["model_estimate"]["rewritten"]
    assert mine["seconds"] == pytest.approx(network.seconds(mine["bytes"], mine["rounds"]))
    assert mine["rounds"] < theirs["rounds"]
    assert mine["seconds"] < network.seconds(theirs["bytes"], theirs["rounds"])
    assert "estimated time on 10 Gbit/s per link, 50 ms per round" in render_markdown(on_network)
