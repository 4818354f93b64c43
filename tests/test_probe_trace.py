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


def test_probe_pair_over_loopback_delivers_every_probe_in_order_and_stops():
    """Two ends on loopback: each receives the other's probes, in order, with the send stamps
    they carry; the sender keeps its schedule (no probe before its slot) and both threads stop."""
    import time

    first = ProbeAgent("mn", "::1", 0, 500, 64, learn_peer=False, bind_address="::1")
    second = ProbeAgent("ha", "::1", 0, 500, 64, learn_peer=False, bind_address="::1")
    first.port, second.port = second.sock.getsockname()[1], first.sock.getsockname()[1]
    try:
        first.start(), second.start()
        deadline = time.monotonic() + 10
        while min(len(first.recv_seq), len(second.recv_seq)) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        first.stop(), second.stop()
        first.sock.close(), second.sock.close()
    assert not any(thread.is_alive() for thread in first._threads + second._threads)
    for sender, receiver in ((first, second), (second, first)):
        received = list(receiver.recv_seq)
        assert len(received) >= 50 and received == list(range(1, len(received) + 1))
        assert list(receiver.recv_tx_ns) == list(sender.sent_ns)[:len(received)]
        assert all(receive >= send for send, receive in zip(receiver.recv_tx_ns, receiver.recv_rx_ns))
        assert all(sender.sent_ok) and receiver.decode_errors == 0
        # each probe left in its own slot: never ahead of the schedule the stamps are counted against
        # (the schedule only ever moves later: a sender far behind restarts it, it never bursts)
        stamps = list(sender.sent_ns)
        first_slot = stamps[0] - sender.sent_late_us[0] * 1000 - 1000  # lateness is in whole us
        assert all(stamp >= first_slot + index * sender.interval_ns for index, stamp in enumerate(stamps))


def test_absolute_sleep_never_returns_before_its_deadline():
    import time

    from nodes.probe import _absolute_sleeper

    sleep_until = _absolute_sleeper()
    for offset_ns in (0, 200_000, 2_000_000, -1_000_000):
        deadline = time.monotonic_ns() + offset_ns
        sleep_until(deadline)
        assert time.monotonic_ns() >= deadline


def test_the_probe_answers_its_lateness_over_its_control_socket(tmp_path):
    """Run as the runner starts the MN's probe (with a control socket): READY, a `lateness`
    answer over a window, and its trace written when SIGTERM stops it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from nodes.agent import AgentClient

    control, out = tmp_path / "probe.control", tmp_path / "probe.json"
    process = subprocess.Popen([sys.executable, "-m", "nodes.probe", "--role", "mn", "--peer", "::1", "--port", "0",
                                "--rate", "500", "--out", str(out), "--control", str(control),
                                "--trace", str(tmp_path / "trace.jsonl")],
                               stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert process.stdout.readline().startswith(b"READY")
        started = time.monotonic_ns()
        time.sleep(0.3)
        client = AgentClient(str(control))
        answer = client.request("lateness", start_ns=started, end_ns=time.monotonic_ns())
        nothing = client.request("lateness", start_ns=0, end_ns=1)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert answer["ok"] and answer["p99_ms"] is not None and answer["p99_ms"] >= 0
    assert nothing["p99_ms"] is None
    trace = json.loads(out.read_text())
    assert len(trace["sent"]["seq"]) >= 100
