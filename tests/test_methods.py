"""Methods are declared objects: every registered method runs through the runner's one handover
path, and the scenario parser, the metrics and the report take them from the registry."""

from __future__ import annotations

import dataclasses

import pytest

from ipsec import IpsecContext
from scenarios import config
from scenarios.runner import methods
from scenarios.runner.experiment import Experiment, HandoverFailed
from topo import plan


@dataclasses.dataclass
class _Record:
    from_ar: str
    to_ar: str

    def as_dict(self) -> dict:
        return {"from_ar": self.from_ar, "to_ar": self.to_ar, "detach_start_ns": 1, "attached_ns": 2}


class _FakeTestbed:
    def __init__(self) -> None:
        self.current_ar = plan.PAR

    def other_ar(self) -> str:
        return plan.NAR if self.current_ar == plan.PAR else plan.PAR

    def handover(self, to_ar: str, l2_delay_ms: float) -> _Record:
        record, self.current_ar = _Record(self.current_ar, to_ar), to_ar
        return record


class _FakeBaseline:
    def __init__(self, steps: list) -> None:
        self.steps = steps

    def attach(self, ar: str) -> dict:
        self.steps.append(("ike-attach", ar))
        return {"elapsed_ms": 1.0}

    def detach_old(self, ar: str) -> None:
        self.steps.append(("ike-detach", ar))


class _FakeExperiment(Experiment):
    """The runner's real handover path, with the agents and the kernel replaced by a log."""

    def __init__(self, transfer_result: str = "completed") -> None:
        self.testbed = _FakeTestbed()
        self.anticipation_ms = 0.0
        self.agents = {}
        self.steps: list = []
        self.security = None
        self.baseline = _FakeBaseline(self.steps)
        self.transfer_result = transfer_result
        self.on_state_change = None
        self._pending_trigger, self._fallback_triggered = None, False

    def enter(self, security) -> None:
        self.steps.append(("enter", security.name))
        self.security = security

    def request(self, agent: str, cmd: str, **arguments) -> dict:
        self.steps.append((agent, cmd))
        if cmd == "status":
            outcome = {"transaction": 1, "result": self.transfer_result, "reason": "test", "statuses": [(0x8001, 0x83)]}
            return {"idle": True, "cxtp_in_progress": False, "transactions": 1, "outcome": outcome,
                    "move_expected": False}
        return {}

    def xfrm_state(self, node: str, address: str) -> IpsecContext:
        return IpsecContext()


@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_through_the_same_path(name):
    method = methods.get(name)
    experiment = _FakeExperiment()
    record = experiment.handover(method, l2_delay_ms=10.0)
    steps = experiment.steps
    # the shared steps, in order, for every method
    assert steps[0] == ("enter", method.security.name)
    attached = steps.index((plan.MN, "expect_move"))
    assert steps.index((plan.MN, "status")) > attached
    assert record["trigger"] == "kernel"
    assert record["method"] == name and record["restored_by"] == "method"
    assert record["from_ar"] == plan.PAR and record["to_ar"] == plan.NAR
    # and the method's own steps where it declares them
    if method.cxtp:
        assert steps.index((plan.MN, "set_key")) < attached and (plan.PAR, "set_mn_key") in steps
    if method.before_detach is not None:
        assert record["anticipation_start_ns"] is not None
    if method.after_attach is not None:
        assert steps[attached + 1:attached + 3] == [("ike-attach", plan.NAR), ("ike-detach", plan.PAR)]
        assert record["reauth"] == {"elapsed_ms": 1.0}
    else:
        assert not any(step[0].startswith("ike-") for step in steps)


@pytest.mark.parametrize("name", methods.cxtp_names())
def test_a_failed_transfer_falls_back_to_a_reactive_retry_or_fails(name):
    experiment = _FakeExperiment(transfer_result="failed")
    with pytest.raises(HandoverFailed) as failure:
        experiment.handover(methods.get(name), l2_delay_ms=10.0)
    # the fake pAR holds no context to retry with: a defined failure, with the partial record
    assert "transfer failed" in failure.value.reason and failure.value.record["method"] == name


def test_parser_metrics_and_report_read_the_registry():
    assert config.load(None).methods == methods.default_names()
    assert methods.reference_name() == "none"
    assert set(methods.cxtp_names()) == {"cxtp-predictive", "cxtp-reactive", "cxtp-network", "cxtp-reactive-ike"}
    assert set(methods.reauth_names()) == {"reauth-eap", "reauth-eap-md5", "reauth-psk"}
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(methods.get("none"))
    with pytest.raises(config.ScenarioError, match="unknown method"):
        config.from_dict({"methods": ["teleport"]})


def test_a_new_method_is_one_declaration(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register(methods.Method("cxtp-reactive-copy", "a copy, for the test", methods.STATIC_TUNNEL,
                                    cxtp=True, default=False))
    scenario = config.from_dict({"methods": ["none", "cxtp-reactive-copy"]})
    assert scenario.methods == ("none", "cxtp-reactive-copy")
    assert "cxtp-reactive-copy" in methods.cxtp_names()
    record = _FakeExperiment().handover(methods.get("cxtp-reactive-copy"), 10.0)
    assert record["method"] == "cxtp-reactive-copy"
