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


def test_a_handler_that_raises_is_counted_and_the_agent_goes_on(tmp_path, capsys):
    """No input or timer ends an agent: what a handler raises is traced and counted, and the
    agent serves the next input and the next timer as before."""
    import socket

    agent = _agent(tmp_path)
    served = []
    protocol, peer = socket.socketpair()

    def receive() -> None:
        data = protocol.recv(16)
        if data == b"bad":
            raise ValueError("an event the state table does not allow")
        served.append(data)

    agent.add_reader(protocol, receive)
    agent.call_at(time.monotonic(), lambda: 1 / 0)
    agent.call_at(time.monotonic() + 0.02, lambda: peer.send(b"bad"))
    agent.call_at(time.monotonic() + 0.05, lambda: peer.send(b"good"))
    agent.call_at(time.monotonic() + 0.1, agent.stop)
    agent.run()
    assert served == [b"good"] and agent.handler_failures == 2
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    failed = [event for event in events if event["event"] == "handler_failed"]
    assert [event["error"] for event in failed] == [
        "ZeroDivisionError('division by zero')", "ValueError('an event the state table does not allow')"]
    protocol.close(), peer.close()
