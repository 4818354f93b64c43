"""The contracts between processes are declared once and both sides keep them: every agent serves
exactly the commands its typed client declares, with the same fields; every trace event an agent
writes is a declared one; every event the analysis reads is written by some agent."""

from __future__ import annotations

import ast
import inspect
import socket
import threading
from pathlib import Path

import pytest

from nodes.agent import Agent
from nodes.ar_agent import AccessRouterAgent
from nodes.contracts import (
    AgentError,
    ArControl,
    ContractError,
    ControlClient,
    HaControl,
    MnControl,
    TraceEvent,
    command,
    commands_of,
    parameters,
    serve,
)
from nodes.ha_agent import HomeAgent
from nodes.mn_agent import MobileNodeAgent
from scenarios.analysis import metrics

REPOSITORY = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = ((MnControl, MobileNodeAgent), (ArControl, AccessRouterAgent), (HaControl, HomeAgent))


@pytest.mark.parametrize("contract, implementation", IMPLEMENTATIONS, ids=lambda value: value.__name__)
def test_every_agent_implements_its_contract_with_the_same_fields(contract, implementation):
    for name, declared in commands_of(contract).items():
        if name == "ping":
            continue
        method = getattr(implementation, name)
        assert parameters(inspect.signature(method)) == parameters(declared), name


def test_serve_refuses_an_agent_that_does_not_keep_its_contract(tmp_path):
    agent = Agent("x", str(tmp_path / "control"), str(tmp_path / "trace"))
    try:
        class Partial:
            def set_key(self, key: str) -> dict:
                return {}

        with pytest.raises(ContractError, match="does not implement MnControl.predictive"):
            serve(agent, Partial(), MnControl)

        class WrongFields:
            def binding(self, identity: str | None = None) -> dict:
                return {}

            def lateness(self, start_ns: int) -> dict:
                return {}

        with pytest.raises(ContractError, match="does not match HaControl.lateness"):
            serve(agent, WrongFields(), HaControl)
    finally:
        agent.close()


class _EchoControl(ControlClient):
    @command
    def echo(self, *, text: str, times: int = 1) -> dict: ...

    @command
    def refuse(self) -> dict: ...


class _Echo:
    def echo(self, text: str, times: int = 1) -> dict:
        return {"text": text * times}

    def refuse(self) -> dict:
        raise ValueError("no")


def test_a_typed_client_talks_to_a_served_agent_over_its_socket(tmp_path):
    """One command's whole path: the client's declaration, the socket, the agent's dispatch to the
    implementation of the same name, the reply; a refusal comes back as AgentError naming both."""
    control = str(tmp_path / "control")
    agent = Agent("echo", control, str(tmp_path / "trace.jsonl"))
    serve(agent, _Echo(), _EchoControl)
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    client = _EchoControl(control, timeout=5.0, name="echo")
    try:
        assert client.echo(text="ab", times=2)["text"] == "abab"
        assert client.ping()["name"] == "echo"
        with pytest.raises(AgentError, match="echo: refuse: ValueError: no"):
            client.refuse()
    finally:
        client.close()
        agent.stop()
        loop.join(5)
    events = [line for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert any('"event": "command_failed"' in line for line in events)


def test_a_client_names_the_agent_when_its_socket_is_gone(tmp_path):
    path = str(tmp_path / "gone")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    client = MnControl(path, timeout=2.0, name="mn")
    server.accept()[0].close()
    server.close()
    with pytest.raises(AgentError, match="^mn: status: "):
        client.status()
    client.close()


def _trace_calls():
    """(file, first argument) of every ``.trace(...)`` call in nodes/."""
    for path in sorted((REPOSITORY / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "trace" \
                    and node.args:
                yield path.name, node.args[0]


def test_every_trace_event_an_agent_writes_is_declared():
    calls = list(_trace_calls())
    assert len(calls) > 30
    for name, argument in calls:
        declared = (isinstance(argument, ast.Attribute) and isinstance(argument.value, ast.Name)
                    and argument.value.id == "TraceEvent" and argument.attr in TraceEvent.__members__)
        engine = isinstance(argument, ast.Call) and getattr(argument.func, "id", None) == "engine_event"
        assert declared or engine, f"{name}:{argument.lineno}: a trace event not declared in TraceEvent"


def test_every_event_the_analysis_reads_is_written_by_an_agent():
    written = {argument.attr for _, argument in _trace_calls() if isinstance(argument, ast.Attribute)}
    read = {step.event.name for step in metrics.TIMELINE_STEPS}
    assert read <= written, read - written
