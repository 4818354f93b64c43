"""Packet evidence from a real handover: captures on the access links and the AR-AR link, a
Wireshark profile with the SAs exported from the nodes' kernels, and tshark reading both.

One CXTP predictive handover (CTAR to the pAR, PCTD, CTAA, CTAR to the nAR, CTAA, CTDR) and one
reactive handover back (CTAR, CT-Req, CTD, CTAA, CTDR) are captured with tcpdump in the ARs'
namespaces (started before, stopped by PID after). The SAs of every node are exported before the
first handover and after each one, as the runner does. Then, with the testbed gone, tshark must
dissect every CXTP message of both handovers (the AR-AR ones inside ESP) and decrypt every ESP
packet of the three captures with a good ICV.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scenarios import config
from scenarios.analysis import wireshark
from scenarios.runner import methods
from scenarios.runner.experiment import SPI_MN_IN, SPI_MN_OUT, Experiment, pause
from scenarios.runner.run import warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

CAPTURE_POINTS = {  # capture name -> (node, link): each AR's end of its links
    "access-par": (plan.PAR, plan.ACCESS_LINK[plan.PAR]),
    "access-nar": (plan.NAR, plan.ACCESS_LINK[plan.NAR]),
    "ar-ar": (plan.PAR, "par-nar"),
}
CTAR, CTAA, CTD, PCTD, CTDR, CTC, CT_REQ = range(1, 8)


class Capture:
    """tcpdump on one interface of one Mininet host, writing a pcap; stopped by its PID."""

    def __init__(self, testbed: Testbed, node: str, interface: str, path: Path) -> None:
        self.path = path
        # -Z root: Debian's tcpdump would drop to user tcpdump before opening the file. Packets are
        # taken from the kernel at once (--immediate-mode, a large buffer) but written in blocks
        # (no -U): in the guest every write to the shared file system is a host system call, and a
        # writer that falls behind makes the kernel drop packets. SIGTERM flushes the file.
        self.process = testbed.host(node).popen(
            ["tcpdump", "-n", "--immediate-mode", "-B", "8192", "-Z", "root", "-s", "0", "-i", interface,
             "-w", str(path), "not udp"],  # the probes' clear copies that tunnel decapsulation re-injects
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = self.process.stderr.readline().decode(errors="replace")  # readiness: "listening on ..."
        if "listening on" not in line:
            self.stop()
            raise AssertionError(f"tcpdump on {node}:{interface} did not start: {line}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, error = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, error = self.process.communicate()
        return error.decode(errors="replace")


def _wait_released(experiment: Experiment, par: str, mn_previous: str, timeout_s: float = 3.0) -> None:
    """The pAR releases the MN's context after the CTDR, a moment after the MN is done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and experiment.xfrm_state(par, mn_previous).sas:
        pause(20)


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    """Run two captured handovers; once the testbed is gone, return the profile, the captures, the
    handover records, what each export added and tcpdump's closing words."""
    directory = tmp_path_factory.mktemp("wireshark-capture")
    profile = wireshark.write_profile(directory / "wireshark")
    links = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
             plan.AR_HA: LinkParams(delay_ms=5.0), plan.AR_AAA: LinkParams(delay_ms=5.0)}
    records, captures, exports = [], {}, []
    with Testbed(links) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, directory / "run", probe_rate=50.0,
                                timers=config.load(None).cxtp_timers(testbed.link_params))
        try:
            # The static tunnel of the first attach, then its SAs (and the ARs' CXTP SAs) exported.
            experiment.enter(methods.get("cxtp-predictive").security)
            exports.append(wireshark.export_testbed_sas(profile, testbed))
            running = []
            try:
                for name, (node, link) in CAPTURE_POINTS.items():
                    interface = plan.LINKS_BY_NAME[link].interface(node)
                    captures[name] = directory / f"{name}.pcap"
                    running.append(Capture(testbed, node, interface, captures[name]))
                pause(200)
                for method in ("cxtp-predictive", "cxtp-reactive"):
                    record = experiment.handover(methods.get(method), l2_delay_ms=20.0)
                    assert record.completed, record
                    _wait_released(experiment, record.from_ar, record.mn_previous)
                    exports.append(wireshark.export_testbed_sas(profile, testbed))  # what the runner does
                    records.append(record)
                    pause(300)  # protected traffic through the new AR, in the capture
            finally:
                outputs = [capture.stop() for capture in running]
        finally:
            experiment.stop()
    return profile, captures, records, exports, outputs


def tshark_rows(profile: wireshark.WiresharkProfile, capture: Path, display_filter: str, *fields: str):
    """One row per packet: the fields' values (occurrences joined by ',')."""
    arguments = ["-Y", display_filter, "-T", "fields", "-E", "separator=;", "-E", "occurrence=a"]
    for field in fields:
        arguments += ["-e", field]
    result = subprocess.run(profile.tshark_command(capture, *arguments), capture_output=True, text=True,
                            env=profile.environment(), timeout=600)
    assert result.returncode == 0, result.stderr
    return [dict(zip(fields, line.split(";"))) for line in result.stdout.splitlines()]


def messages(profile, capture: Path) -> list[tuple[int, str]]:
    """(CXTP type, MN previous address) of every CXTP message in the capture, in order."""
    found = []
    for row in tshark_rows(profile, capture, "cxtp.type", "cxtp.type", "cxtp.mn_prev"):
        for kind, address in zip(row["cxtp.type"].split(","), row["cxtp.mn_prev"].split(",")):
            found.append((int(kind), address))
    return found


def test_the_profile_holds_every_sa_of_the_handovers(evidence):
    profile, _, records, exports, _ = evidence
    assert all(not export.skipped for export in exports), exports
    keys = {(entry.source, entry.destination, entry.spi) for entry in profile.entries()}
    for record in records:
        par, nar = plan.AR_ACCESS_ADDRESS[record.from_ar], plan.AR_ACCESS_ADDRESS[record.to_ar]
        assert (par, record.mn_previous, SPI_MN_IN) in keys
        assert (record.mn_previous, par, SPI_MN_OUT) in keys
        assert (nar, record.mn_new, SPI_MN_IN) in keys
        assert (record.mn_new, nar, SPI_MN_OUT) in keys
    link = plan.AR_LINK_ADDRESS
    assert {(link[plan.PAR], link[plan.NAR]), (link[plan.NAR], link[plan.PAR])} <= {k[:2] for k in keys}


def test_every_esp_packet_decrypts_with_a_good_icv(evidence):
    profile, captures, _, _, _ = evidence
    for name, capture in captures.items():
        rows = tshark_rows(profile, capture, "esp", "frame.number", "esp.spi", "esp.icv_good", "esp.icv_bad",
                           "esp.protocol")
        # the access links carry the probe stream; the AR-AR link only the SCTP association's packets
        assert len(rows) >= (4 if name == "ar-ar" else 20), f"{name}: only {len(rows)} ESP packets"
        bad = [row for row in rows if row["esp.icv_good"] != "1" or row["esp.icv_bad"] != "0"
               or not row["esp.protocol"]]
        assert bad == [], f"{name}: {len(bad)} of {len(rows)} ESP packets not decrypted with a good ICV: {bad[:5]}"


def test_access_links_show_the_ctar_and_ctaa_of_both_handovers(evidence):
    profile, captures, records, _, _ = evidence
    seen = messages(profile, captures["access-par"]) + messages(profile, captures["access-nar"])
    predictive, reactive = records
    # predictive: CTAR to the pAR before the move, CTAR to the nAR after it, a CTAA for each
    assert seen.count((CTAR, predictive.mn_previous)) >= 2, seen
    assert seen.count((CTAA, predictive.mn_previous)) >= 2, seen
    # reactive back: CTAR to the new nAR, its CTAA
    assert (CTAR, reactive.mn_previous) in seen and (CTAA, reactive.mn_previous) in seen, seen


def test_ar_ar_link_shows_the_transfers_inside_esp(evidence):
    profile, captures, records, _, _ = evidence
    predictive, reactive = records
    seen = messages(profile, captures["ar-ar"])
    assert (PCTD, predictive.mn_previous) in seen and (CTDR, predictive.mn_previous) in seen, seen
    assert {(CT_REQ, reactive.mn_previous), (CTD, reactive.mn_previous),
            (CTDR, reactive.mn_previous)} <= set(seen), seen
    # every one of them was inside ESP: nothing of CXTP on that link in clear
    assert tshark_rows(profile, captures["ar-ar"], "cxtp and not esp", "frame.number") == []
    # the IPsec context in the PCTD and the CTD, decoded: the MN's two SAs with the testbed's algorithms
    rows = tshark_rows(profile, captures["ar-ar"], "cxtp.type == 3 or cxtp.type == 4", "cxtp.type",
                       "cxtp.cdb.fpt", "cxtp.ipsec.sa.spi", "cxtp.ipsec.alg.name", "cxtp.ipsec.sel.daddr")
    assert {row["cxtp.type"] for row in rows} == {"3", "4"}
    for row in rows:
        # the IPsec context first; after it only the blocks of our departures from RFC 4067
        # (docs/protocol.md: the transfer's identity, the bound address, the CTAA key)
        fpts = row["cxtp.cdb.fpt"].split(",")
        assert fpts[0] == "0x8001" and set(fpts[1:]) <= {"0xff02", "0xff03", "0xff04"}, fpts
        assert sorted(int(spi, 16) for spi in row["cxtp.ipsec.sa.spi"].split(",")) == [SPI_MN_OUT, SPI_MN_IN]
        assert row["cxtp.ipsec.alg.name"].split(",") == ["cbc(aes)", "hmac(sha256)"] * 2
        assert plan.HA_ADDRESS in row["cxtp.ipsec.sel.daddr"].split(",")


def test_one_filter_shows_the_messages_of_one_handover(evidence):
    """docs/wireshark.md: `cxtp.mn_prev == <MN's previous address>` selects one handover's messages."""
    profile, captures, records, _, _ = evidence
    predictive = records[0]
    kinds = set()
    for capture in captures.values():
        rows = tshark_rows(profile, capture, f"cxtp.mn_prev == {predictive.mn_previous}", "cxtp.type")
        kinds |= {int(kind) for row in rows for kind in row["cxtp.type"].split(",")}
    assert {CTAR, CTAA, PCTD, CTDR} <= kinds


def test_the_captures_lost_nothing(evidence):
    *_, outputs = evidence
    for output in outputs:
        assert re.search(r"^0 packets dropped by kernel$", output, re.MULTILINE), output
