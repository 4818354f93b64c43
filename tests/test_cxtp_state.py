"""The roles' state machines: one transition table per role, illegal transitions named."""

from __future__ import annotations

import pytest

from cxtp import AccessRouter, IllegalTransition, MobileNode, ProtocolError
from cxtp.state import (
    MN_TRANSITIONS,
    SOURCE_TRANSITIONS,
    TARGET_TRANSITIONS,
    Machine,
    MnEvent,
    MnState,
    SourceEvent,
    SourceState,
    TargetEvent,
    TargetState,
    transition,
)

MN = "2001:db8:1::100"
PAR = "2001:db8:1::1"
NAR = "2001:db8:2::1"


@pytest.mark.parametrize("table, states, events", [
    (MN_TRANSITIONS, MnState, MnEvent),
    (SOURCE_TRANSITIONS, SourceState, SourceEvent),
    (TARGET_TRANSITIONS, TargetState, TargetEvent),
])
def test_tables_are_closed(table, states, events):
    # every target state is a state of the role, every event of the role is used somewhere,
    # and every state but the final one has a way out
    assert set(table) <= set(states)
    used = {event for row in table.values() for event in row}
    assert used == set(events)
    for row in table.values():
        assert set(row.values()) <= set(states)
    reachable = {next(iter(states))}
    frontier = list(reachable)
    while frontier:
        for nxt in table.get(frontier.pop(), {}).values():
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(states)


def test_illegal_transition_names_role_state_and_event():
    with pytest.raises(IllegalTransition) as caught:
        transition("par", SourceState.RELEASE_HOLD, SourceEvent.CTDR_SUCCESS)
    error = caught.value
    assert isinstance(error, ProtocolError)
    assert (error.role, error.state, error.event) == ("par", SourceState.RELEASE_HOLD,
                                                      SourceEvent.CTDR_SUCCESS)
    assert str(error) == "par: event CTDR_SUCCESS is not allowed in state RELEASE_HOLD"


def test_machine_fires_only_table_transitions():
    machine = Machine("nar", TargetState.IDLE)
    assert machine.can(TargetEvent.REQUEST) and not machine.can(TargetEvent.ACTIVATE)
    assert machine.fire(TargetEvent.REQUEST) is TargetState.REQUESTED
    with pytest.raises(IllegalTransition, match="nar: event ACTIVATE is not allowed in state REQUESTED"):
        machine.fire(TargetEvent.ACTIVATE)
    assert machine.state is TargetState.REQUESTED  # unchanged by the refused event


def test_mn_api_misuse_raises_named_transition_errors():
    mn = MobileNode(MN)
    with pytest.raises(IllegalTransition, match="mn: event CANCEL is not allowed in state IDLE"):
        mn.cancel(0.0)
    mn.set_key(b"k1")
    mn.request_predictive(PAR, NAR, 0.0)
    assert mn.state is MnState.PREDICTIVE
    with pytest.raises(IllegalTransition, match="REQUEST_PREDICTIVE .* PREDICTIVE"):
        mn.request_predictive(PAR, NAR, 0.1)
    mn.attached(NAR, PAR, 0.2)
    with pytest.raises(IllegalTransition, match="mn: event ATTACH is not allowed in state ATTACHED"):
        mn.attached(NAR, PAR, 0.3)


def test_mn_refused_call_leaves_state_alone():
    mn = MobileNode(MN)
    with pytest.raises(ProtocolError, match="no fresh key"):
        mn.attached(NAR, PAR, 0.0)
    assert mn.state is MnState.IDLE and not mn.in_progress


def test_ar_api_misuse_raises_named_transition_errors():
    ar = AccessRouter(PAR)
    with pytest.raises(IllegalTransition, match="nar: event CANCEL is not allowed in state IDLE"):
        ar.cancel(MN, 0.0)
    ar.set_mn_key(MN, b"key")
    ar.trigger_predictive(MN, NAR, 0.0)
    assert ar.source_state(MN) is SourceState.SENT
    with pytest.raises(IllegalTransition, match="par: event START is not allowed in state SENT"):
        ar.trigger_predictive(MN, NAR, 0.1)


def test_nar_cancel_after_activation_is_illegal():
    # the tombstone of an activated transfer cannot be cancelled
    from test_cxtp_engine import MN_PREV, Net, complete_predictive

    net = Net()
    complete_predictive(net)
    assert net.nar.target_state(MN_PREV) is TargetState.ACTIVATED
    with pytest.raises(IllegalTransition, match="CANCEL .* ACTIVATED"):
        net.nar.cancel(MN_PREV, 1.0)
