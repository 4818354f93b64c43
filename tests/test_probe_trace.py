"""The probe agent's trace: written column by column, read back as the metrics read it."""

from __future__ import annotations

import json

from nodes.probe import ProbeAgent


def test_trace_round_trip(tmp_path):
    agent = ProbeAgent("mn", "::1", 0, 1000, 64, learn_peer=False, bind_address="::1")
    try:
        for sequence in range(1, 150_001):  # more than one chunk per column
            agent.sent_seq.append(sequence)
            agent.sent_ns.append(sequence * 1_000_000)
            agent.sent_ok.append(1)
            agent.sent_late_us.append(sequence % 7)
        agent.recv_seq.extend([1, 3])
        agent.recv_tx_ns.extend([1_000_000, 3_000_000])
        agent.recv_rx_ns.extend([1_500_000, 3_500_000])
        agent.recv_ifindex.extend([2, 3])
        path = tmp_path / "probe.json"
        agent.write(str(path))
    finally:
        agent.sock.close()
    trace = json.loads(path.read_text())
    assert trace["sent"]["seq"] == list(range(1, 150_001))
    assert trace["sent"]["late_us"][:8] == [1, 2, 3, 4, 5, 6, 0, 1]
    assert trace["received"] == {"seq": [1, 3], "tx_ns": [1_000_000, 3_000_000], "rx_ns": [1_500_000, 3_500_000],
                                 "ifindex": [2, 3]}
    assert trace["role"] == "mn" and "1" in trace["interfaces"]
