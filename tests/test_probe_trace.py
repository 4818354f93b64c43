"""The probe streams: one sender for both ends, and each end's trace written column by column."""

from __future__ import annotations

import json

from nodes.probe import ProbeEnd, ProbeStreams


def test_trace_round_trip(tmp_path):
    agent = ProbeEnd("mn", "::1", 0, 1000, 64, bind_address="::1")
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
    """Two ends on loopback, one sender: each end receives the other's probes, in order, with
    the send stamps they carry; each probe keeps its slot (never before it) and every thread stops."""
    import time

    first = ProbeEnd("mn", "::1", 0, 500, 64, bind_address="::1")
    second = ProbeEnd("ha", "::1", 0, 500, 64, bind_address="::1")
    first.port, second.port = second.sock.getsockname()[1], first.sock.getsockname()[1]
    streams = ProbeStreams([first, second])
    try:
        streams.start()
        deadline = time.monotonic() + 10
        while min(len(first.recv_seq), len(second.recv_seq)) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        window = streams.lateness(0, time.monotonic_ns())
        nothing = streams.lateness(0, 1)
    finally:
        streams.stop()
        first.sock.close(), second.sock.close()
    assert streams.threads == (3, 0)
    # the lateness the runner asks for, per end; none over a window without probes
    assert set(window) == {"mn", "ha"} and all(value is not None and value >= 0 for value in window.values())
    assert nothing == {"mn": None, "ha": None}
    # one sender: both ends sent in the same slots, the same number of probes (give or take the last)
    assert abs(len(first.sent_seq) - len(second.sent_seq)) <= 1
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


def test_ends_of_one_sender_share_one_rate():
    import pytest

    first = ProbeEnd("mn", "::1", 0, 500, 64, bind_address="::1")
    second = ProbeEnd("ha", "::1", 0, 1000, 64, bind_address="::1")
    try:
        with pytest.raises(ValueError):
            ProbeStreams([first, second])
        with pytest.raises(ValueError):
            ProbeStreams([])
    finally:
        first.sock.close(), second.sock.close()
