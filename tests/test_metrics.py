"""Interruption metrics on synthetic traces whose answer is known."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest

from nodes import probe
from scenarios.analysis import metrics
from scenarios.records import HandoverRecord
from topo import plan

MS = 1_000_000


def trace(received: list[tuple[int, float, float]]) -> dict:
    """(seq, send ms, receive ms) rows -> a probe trace as the agent writes it."""
    return {"received": {"seq": [r[0] for r in received], "tx_ns": [int(r[1] * MS) for r in received],
                         "rx_ns": [int(r[2] * MS) for r in received]}}


def stream(first: int, last: int, delay: float, skip: range = range(0)) -> list[tuple[int, float, float]]:
    """One probe per ms, seq n sent at n ms and received ``delay`` ms later, except ``skip``."""
    return [(n, float(n), n + delay) for n in range(first, last + 1) if n not in skip]


def test_gap_and_losses_of_a_clean_handover():
    # Detach at 100 ms; probes 100..159 lost; path delay 12 ms.
    result = metrics.interruption(trace(stream(1, 300, 12, skip=range(100, 160))), detach_ns=100 * MS)
    assert result["interruption_ms"] == pytest.approx(61.0)
    assert result["lost"] == 60
    assert (result["last_before_seq"], result["first_after_seq"]) == (99, 160)


def test_in_flight_probes_do_not_end_the_interruption():
    # Probes sent just before the detach arrive up to 12 ms after it: the gap starts after them.
    result = metrics.interruption(trace(stream(1, 300, 12, skip=range(95, 170))), detach_ns=100 * MS)
    assert result["last_before_seq"] == 94 and result["first_after_seq"] == 170
    assert result["interruption_ms"] == pytest.approx(76.0)


def test_stale_probes_from_a_router_queue_do_not_end_the_interruption():
    rows = stream(1, 300, 5, skip=range(100, 180))
    rows.append((40, 40.0, 150.0))  # an old probe delivered late after a ping-pong handover
    result = metrics.interruption(trace(rows), detach_ns=100 * MS)
    assert result["first_after_seq"] == 180
    assert result["interruption_ms"] == pytest.approx(81.0)


def test_horizon_limits_the_search_to_this_handover():
    rows = stream(1, 600, 5, skip=set(range(100, 150)) | set(range(400, 550)))
    result = metrics.interruption(trace(rows), detach_ns=100 * MS, horizon_ns=300 * MS)
    assert result["first_after_seq"] == 150


def test_missing_data_is_an_error_not_a_number():
    with pytest.raises(metrics.MetricsError):
        metrics.interruption(trace(stream(200, 300, 5)), detach_ns=100 * MS)
    with pytest.raises(metrics.MetricsError):
        metrics.interruption(trace(stream(1, 99, 5)), detach_ns=200 * MS)


def test_summary_statistics():
    stats = metrics.statistics_of([10.0, 20.0, 30.0, 40.0, 50.0])
    assert stats == {"median": 30.0, "p95": pytest.approx(48.0), "min": 10.0, "max": 50.0, "n": 5}
    assert metrics.statistics_of([]) == {"n": 0}


def path_trace(rows: list[tuple[int, float, float, int]]) -> dict:
    """(seq, send ms, receive ms, ifindex) rows, interfaces 1 = old path, 2 = new path."""
    return {"received": {"seq": [r[0] for r in rows], "tx_ns": [int(r[1] * MS) for r in rows],
                         "rx_ns": [int(r[2] * MS) for r in rows], "ifindex": [r[3] for r in rows]},
            "interfaces": {"1": "mn-par", "2": "mn-nar"}}


def test_late_old_path_probes_do_not_split_the_silence():
    """A regression: two late probes via the old AR in the middle of a 249 ms silence made the longest
    gap 168 ms. Measured to the first probe through the new path, the silence is whole."""
    rows = [(n, float(n), n + 5.0, 1) for n in range(1, 100)]           # old path, until the detach
    rows += [(101, 101.0, 180.0, 1), (102, 102.0, 181.0, 1)]             # late via the old AR
    rows += [(n, float(n), n + 5.0, 2) for n in range(343, 400)]         # new path from 348 ms
    trace_ = path_trace(rows)
    new_path = metrics.path_ifindexes(trace_, "mn-nar")
    assert new_path == {2}
    result = metrics.interruption(trace_, detach_ns=104 * MS, new_path=new_path)
    assert result["interruption_ms"] == pytest.approx(348.0 - 104.0)
    assert result["late_old_path"] == 2
    assert (result["last_before_seq"], result["first_after_seq"]) == (99, 343)
    # every probe in the window that never arrived, not only those inside the longest gap
    assert result["lost"] == (343 - 100) - 2
    legacy = metrics.interruption(path_trace(rows), detach_ns=104 * MS)
    assert legacy["interruption_ms"] < result["interruption_ms"]


def test_no_probe_through_the_new_path_is_an_error():
    rows = [(n, float(n), n + 5.0, 1) for n in range(1, 300)]
    with pytest.raises(metrics.MetricsError, match="new path"):
        metrics.interruption(path_trace(rows), detach_ns=100 * MS, new_path={2})


def _record(**fields) -> HandoverRecord:
    return HandoverRecord(index=1, mn=plan.MN_IDENTITY, method="none", from_ar=plan.PAR, to_ar=plan.NAR,
                          mn_previous=plan.MN_COA[plan.PAR], mn_new=plan.MN_COA[plan.NAR], l2_delay_ms=50.0, **fields)


def test_emulation_fidelity_judges_steps_l2_drift_and_a_busy_guest():
    """The runner's verdict on one handover (scenarios.runner.run.emulation_fidelity), at the edges."""
    from scenarios import config
    from scenarios.runner.run import emulation_fidelity

    tolerances = config.load(None).fidelity
    ms = 1_000_000
    handover = _record(detach_start_ns=0, detached_ns=10 * ms, attach_start_ns=60 * ms, attached_ns=70 * ms)
    assert emulation_fidelity(handover, 0.99, tolerances, settled=0.8)["violations"] == []  # the method's own work
    handover.attached_ns += 1
    assert emulation_fidelity(handover, 0.5, tolerances, settled=0.81)["violations"] == [
        "attach took 10.0 ms", "guest busy 81% with the probes alone"]
    handover.attach_start_ns += 10 * ms + 1
    assert "L2 delay off by 10.0 ms" in emulation_fidelity(handover, None, tolerances)["violations"]


def test_probe_lateness_is_judged_during_the_run_as_the_report_judges_it_afterwards():
    """The probes answer the runner with the p99 of their send lateness over the handover's
    window, at the tolerance's edge; the report reads the same from their traces, with the same
    function, and reaches the same verdict (so the runner repeats exactly the handovers the report
    leaves out)."""
    from scenarios import config
    from scenarios.runner.run import emulation_fidelity

    tolerances = config.load(None).fidelity
    limit_us = int(tolerances["max_probe_late_ms"] * 1000)
    ms = 1_000_000
    handover = _record(detach_start_ns=100 * ms, detached_ns=100 * ms, attach_start_ns=150 * ms,
                       attached_ns=150 * ms, window_end_ns=600 * ms)
    sent_ns = [n * 2 * ms for n in range(400)]  # 0 .. 798 ms
    for worst_us, judged in ((limit_us, False), (limit_us + 1, True)):
        # every probe in the window on time but for 1% + 1 of them, late by ``worst_us``; one
        # very late probe outside the window, which must not count
        late_us = [0] * len(sent_ns)
        inside = [n for n, t in enumerate(sent_ns) if 100 * ms <= t <= 600 * ms]
        for n in inside[:4]:
            late_us[n] = worst_us
        late_us[10] = 50_000
        answered = {end: probe.send_lateness_ms(sent_ns, late_us, 100 * ms, 600 * ms) for end in ("mn", "ha")}
        in_run = emulation_fidelity(handover, 0.3, tolerances, settled=0.2, probe_late=answered)
        trace = {"sent": {"ns": sent_ns, "late_us": late_us}}
        afterwards = metrics.fidelity_of(dataclasses.replace(handover, fidelity=in_run), trace, trace, tolerances)
        assert bool(in_run["violations"]) is judged
        assert in_run["violations"] == afterwards["violations"]
        assert in_run["probe_late_p99_ms_mn"] == afterwards["probe_late_p99_ms_mn"]
    assert probe.send_lateness_ms(sent_ns, [0] * len(sent_ns), 900 * ms, 950 * ms) is None


def test_send_lateness_is_the_linear_interpolation_quantile():
    import random

    rng = random.Random(3)
    for size in (1, 2, 3, 10, 151):
        late_us = [rng.randrange(0, 20_000) for _ in range(size)]
        sent_ns = list(range(size))
        assert probe.send_lateness_ms(sent_ns, late_us, 0, size) == pytest.approx(
            metrics.percentile(late_us, 0.99) / 1000)


def _quantised_interruption(outage_ms: float, phase_ms: float, interval_ms: float = 2.0) -> float:
    """What the receiver measures of an outage [0, outage_ms] with probes at phase + k * interval:
    from the last probe before it to the first after it, a whole number of intervals."""
    last_before = phase_ms - interval_ms
    first_after = phase_ms + interval_ms * math.ceil((outage_ms - phase_ms) / interval_ms)
    return first_after - last_before


def _rows(method: str, outage_ms: float, rng, count: int) -> list[dict]:
    return [{"method": method, "sweep_value": None, "warmup": False, "outcome": "ok", "fidelity_ok": True,
             "ha_to_mn": {"interruption_ms": _quantised_interruption(outage_ms, rng.uniform(0, 2.0))},
             "mn_to_ha": {"interruption_ms": _quantised_interruption(outage_ms, rng.uniform(0, 2.0))}}
            for _ in range(count)]


def test_the_mean_overhead_resolves_below_the_probe_interval_where_the_median_cannot():
    """A 2.3 ms overhead measured with 2 ms probes at a random phase per handover: every
    interruption, and so every median, is a whole number of intervals, while the difference of
    the means finds 2.3 ms, inside its interval."""
    import random

    rng = random.Random(7)
    rows = _rows("none", 64.3, rng, 400) + _rows("cxtp-predictive", 66.6, rng, 400)
    summary = {key: {"method": key, "sweep_value": None,
                     **{direction: {"interruption_ms": {}} for direction in ("ha_to_mn", "mn_to_ha")}}
               for key in ("none", "cxtp-predictive")}
    metrics.add_intervals(summary, rows, "none")
    for direction in ("ha_to_mn", "mn_to_ha"):
        overhead = summary["cxtp-predictive"][direction]["overhead_ms"]
        assert (overhead["median"] % 2.0 == pytest.approx(0.0, abs=1e-9)
                or overhead["median"] % 2.0 == pytest.approx(2.0))
        assert overhead["mean"] == pytest.approx(2.3, abs=0.25)
        low, high = overhead["mean_ci95"]
        assert low < 2.3 < high and high - low < 1.0
        assert "overhead_ms" not in summary["none"][direction]


def test_bootstrap_interval_of_a_statistic_and_of_a_difference():
    values = [float(n) for n in range(1, 15)] + [1000.0]
    low, high = metrics.bootstrap_interval(values)
    assert 3.0 <= low <= 8.0 <= high <= 13.0
    mean_low, mean_high = metrics.bootstrap_interval(values, statistic=statistics.fmean)
    assert mean_low <= statistics.fmean(values) <= mean_high and mean_high > 100.0  # the outlier pulls the mean
    assert metrics.bootstrap_interval([5.0] * 4, against=[2.0] * 4, statistic=statistics.fmean) == (3.0, 3.0)
    assert metrics.bootstrap_interval([1.0, 2.0]) is None
