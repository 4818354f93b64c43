"""The agent loop's deferred work: run once nothing else is ready, in order, never fatal."""

from __future__ import annotations

import json
import time

from nodes.agent import Agent


def _agent(tmp_path) -> Agent:
    return Agent("test", str(tmp_path / "control"), str(tmp_path / "trace.jsonl"))


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]


def test_deferred_work_runs_when_idle_in_order_and_a_failure_is_traced(tmp_path, capsys):
    agent = _agent(tmp_path)
    done = []

    def failing() -> None:
        raise RuntimeError("boom")

    agent.defer("first", lambda: done.append("first"))
    agent.defer("failing", failing)
    agent.defer("second", lambda: done.append("second"))
    agent.call_at(time.monotonic() + 0.05, agent.stop)
    agent.run()
    assert done == ["first", "second"]
    failures = [event for event in _events(tmp_path) if event["event"] == "deferred_failed"]
    assert len(failures) == 1 and failures[0]["work"] == "failing" and "boom" in failures[0]["error"]


def test_deferred_work_waits_for_ready_timers_and_still_runs_at_stop(tmp_path, capsys):
    agent = _agent(tmp_path)
    order = []
    agent.defer("late", lambda: order.append("deferred"))
    agent.call_at(time.monotonic(), lambda: order.append("timer"))
    agent.call_at(time.monotonic(), agent.stop)
    agent.run()
    assert order == ["timer", "deferred"], "a due timer goes first; pending work runs before the agent stops"


def test_protocol_input_is_served_before_a_control_request_that_arrived_first(tmp_path, capsys):
    import socket

    agent = _agent(tmp_path)
    order = []
    protocol, peer = socket.socketpair()
    agent.add_reader(protocol, lambda: order.append(("protocol", protocol.recv(16))))
    agent.command("note", lambda: order.append(("control", b"")) or {})
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "control"))  # accepted by the loop's first pass

    def both_arrive() -> None:
        client.sendall(b'{"cmd": "note"}\n')  # the runner asks first ...
        time.sleep(0.01)
        peer.send(b"attach")  # ... then the kernel's event arrives, before the next pass

    agent.call_at(time.monotonic() + 0.02, both_arrive)
    agent.call_at(time.monotonic() + 0.1, agent.stop)
    agent.run()
    assert order == [("protocol", b"attach"), ("control", b"")]
    assert json.loads(client.recv(4096))["ok"]
    for sock in (client, protocol, peer):
        sock.close()
