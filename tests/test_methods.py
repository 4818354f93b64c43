"""Methods are declared objects: every registered method runs through the runner's one handover
path, and the scenario parser, the metrics and the report take them from the registry.

The handover runs through the public :class:`Experiment`, built as the runner builds it; the agents
are stand-ins whose typed clients (:mod:`nodes.contracts`) record every command instead of sending
it, and the testbed and the IKE baseline are stand-ins that record the move and the attach."""

from __future__ import annotations

import pytest

from ipsec import IpsecContext
from nodes.contracts import commands_of
from scenarios import config
from scenarios.records import HandoverRecord
from scenarios.runner import methods
from scenarios.runner.experiment import Experiment, HandoverFailed
from topo import plan
from topo.network import MoveTimes


class _Testbed:
    def __init__(self, log: list) -> None:
        self.current_ar = plan.PAR
        self.mns = 1
        self.log = log

    def host(self, node: str) -> str:
        return node

    def pid(self, node: str) -> int:
        return 0

    def other_ar(self) -> str:
        return plan.NAR if self.current_ar == plan.PAR else plan.PAR

    def handover(self, to_ar: str, l2_delay_ms: float) -> MoveTimes:
        self.log.append(("move", to_ar))
        self.current_ar = to_ar
        return MoveTimes(detach_start_ns=1, detached_ns=2, attach_start_ns=3, attached_ns=4)


class _Baseline:
    def __init__(self, log: list) -> None:
        self.log = log

    def start(self) -> None:
        self.log.append(("ike-start",))

    def attach(self, ar: str) -> dict:
        self.log.append(("ike-attach", ar))
        return {"elapsed_ms": 1.0}

    def detach_old(self, ar: str) -> None:
        self.log.append(("ike-detach", ar))

    def stop(self) -> None:
        self.log.append(("ike-stop",))


class _Agents:
    """Starts stand-in agents: each one's client is the agent's real typed client class, with the
    socket replaced by a log (and the MN's status answered from ``transfer_result``)."""

    def __init__(self, log: list, transfer_result: str = "completed") -> None:
        self.log = log
        self.transfer_result = transfer_result

    def __call__(self, host, module, arguments, directory, name, contract, cwd, ready_timeout_s):
        agents = self
        known = commands_of(contract)

        class Recorded(contract):
            def __init__(self) -> None:
                self.name = name

            def request(self, cmd: str, **fields):
                assert cmd in known, f"{name}: {cmd} is not a command of {contract.__name__}"
                agents.log.append((name, cmd))
                if cmd == "status":
                    outcome = {"transaction": 1, "result": agents.transfer_result, "reason": "test",
                               "statuses": [(0x8001, 0x83)]}
                    return {"ok": True, "idle": True, "cxtp_in_progress": False, "transactions": 1,
                            "outcome": outcome, "move_expected": False, "bound": True, "ba_status": 0}
                return {"ok": True}

        class Process:
            alive, pid = True, 1
            client = Recorded()

            def stop(self) -> None:
                agents.log.append((name, "stopped"))

        return Process()


def _experiment(tmp_path, transfer_result: str = "completed") -> tuple[Experiment, list]:
    log: list = []
    # the testbed and the IKE baseline are stand-ins (above), not a Testbed and an IkeBaseline
    experiment = Experiment(_Testbed(log), tmp_path, anticipation_ms=0.0,  # type: ignore[arg-type]
                            agent_factory=_Agents(log, transfer_result),
                            baseline_factory=lambda *arguments, **options: _Baseline(log))  # type: ignore[arg-type]
    # the kernel's SAD and SPD: empty (the pAR holds no context a retry could use)
    experiment.xfrm_state = lambda node, address, mn=0: IpsecContext()  # type: ignore[method-assign]
    return experiment, log


@pytest.mark.parametrize("name", methods.names())
def test_every_method_runs_through_the_same_path(name, tmp_path):
    method = methods.get(name)
    experiment, log = _experiment(tmp_path)
    started = len(log)
    record = experiment.handover(method, l2_delay_ms=10.0)
    steps = log[started:]
    # the shared steps, in order, for every method
    assert (plan.MN, "signalling_bypass") in steps or not method.security.secure
    expected = steps.index((plan.MN, "expect_move"))
    moved = steps.index(("move", plan.NAR))
    assert expected < moved < steps.index((plan.MN, "status"))
    assert isinstance(record, HandoverRecord)
    assert record.trigger == "kernel" and record.mn == plan.MN_IDENTITY
    assert record.method == name and record.restored_by == "method"
    assert record.from_ar == plan.PAR and record.to_ar == plan.NAR
    assert (record.detach_start_ns, record.attached_ns) == (1, 4)
    # and the method's own steps where it declares them
    if method.cxtp:
        assert steps.index((plan.MN, "set_key")) < moved and (plan.PAR, "set_mn_key") in steps
    if method.before_detach is not None:
        assert record.anticipation_start_ns is not None
    if method.after_attach is not None:
        assert steps[moved + 1:moved + 3] == [("ike-attach", plan.NAR), ("ike-detach", plan.PAR)]
        assert record.reauth == {"elapsed_ms": 1.0}
    else:
        assert not any(step[0].startswith("ike-attach") for step in steps[moved:])
    experiment.stop()


@pytest.mark.parametrize("name", methods.cxtp_names())
def test_a_failed_transfer_falls_back_to_a_reactive_retry_or_fails(name, tmp_path):
    experiment, _ = _experiment(tmp_path, transfer_result="failed")
    with pytest.raises(HandoverFailed) as failure:
        experiment.handover(methods.get(name), l2_delay_ms=10.0)
    # the pAR holds no context to retry with: a defined failure, with the partial record
    assert "transfer failed" in failure.value.reason
    assert failure.value.record is not None and failure.value.record.method == name
    assert failure.value.record.transfer_failure is not None


def test_a_record_reads_back_as_it_was_written(tmp_path):
    experiment, _ = _experiment(tmp_path)
    record = experiment.handover(methods.get("cxtp-reactive"), l2_delay_ms=10.0, index=7, sweep_value=2.5)
    again = HandoverRecord.from_json(record.to_json())
    assert again == record and again.index == 7 and again.sweep_value == 2.5
    assert record.to_json()["restored_by"] == "method"


def test_parser_metrics_and_report_read_the_registry():
    assert config.load(None).methods == methods.default_names()
    assert methods.reference_name() == "none"
    assert set(methods.cxtp_names()) == {"cxtp-predictive", "cxtp-reactive", "cxtp-network", "cxtp-reactive-ike"}
    assert set(methods.reauth_names()) == {"reauth-eap", "reauth-eap-md5", "reauth-eap-tls", "reauth-eap-tls-resumed",
                                          "reauth-psk"}
    with pytest.raises(ValueError, match="registered twice"):
        methods.register(methods.get("none"))
    with pytest.raises(config.ScenarioError, match="unknown method"):
        config.from_dict({"methods": ["teleport"]})


def test_a_new_method_is_one_declaration(monkeypatch, tmp_path):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    methods.register(methods.Method("cxtp-reactive-copy", "a copy, for the test", methods.STATIC_TUNNEL,
                                    cxtp=True, transfer="reactive", default=False))
    scenario = config.from_dict({"methods": ["none", "cxtp-reactive-copy"]})
    assert scenario.methods == ("none", "cxtp-reactive-copy")
    assert "cxtp-reactive-copy" in methods.cxtp_names()
    experiment, _ = _experiment(tmp_path)
    record = experiment.handover(methods.get("cxtp-reactive-copy"), 10.0)
    assert record.method == "cxtp-reactive-copy"


def test_a_cxtp_method_names_its_transfer():
    with pytest.raises(ValueError, match="names its transfer"):
        methods.Method("cxtp-vague", "no transfer named", methods.STATIC_TUNNEL, cxtp=True)
    with pytest.raises(ValueError, match="names its transfer"):
        methods.Method("none-with-transfer", "a transfer without CXTP", methods.NO_SECURITY, transfer="reactive")
