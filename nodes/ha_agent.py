"""The HA agent: binding cache fed by Binding Updates, and the probe streams.

The HA sends its probes to the MN's home address, which it intercepts and tunnels to the care-of
address its binding cache holds (:mod:`nodes.home_path`), so the downlink resumes exactly when the
HA has processed the MN's Binding Update (and the path to the new care-of address, through the nAR
and its IPsec state, works). The MN's end of the probes
runs here too, with its socket in the MN's namespace: one sender serves both ends (see
nodes.probe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from pyroute2 import IPRoute

from nodes import home_path, mobility
from nodes.agent import Agent, main_guard
from nodes.contracts import AgentError, HaControl, TraceEvent, serve
from nodes.home_path import HaHomePath, HomePathError
from nodes.probe import DEFAULT_PORT, ProbeEnd, ProbeStreams, send_lateness_ms
from nodes.tcp_flow import TcpFlow, TcpFlowError


@dataclasses.dataclass
class ServedMn:
    """One more MN this HA serves (many MNs): its key, its home path, its probe ends."""

    identity: str
    mobility_key: bytes | None
    home: HaHomePath | None
    #: its probe ends (the HA's and the MN's), the sender they share, and where their traces go
    ends: tuple[ProbeEnd, ...] = ()
    outputs: dict[ProbeEnd, str] = dataclasses.field(default_factory=dict)
    streams: ProbeStreams | None = None


class HomeAgent:
    def __init__(self, agent: Agent, probes: ProbeStreams, probe: ProbeEnd, identity: str,
                 outputs: dict[ProbeEnd, str] | None = None, mobility_key: bytes | None = None,
                 address: str | None = None, home: HaHomePath | None = None,
                 tcp: tuple[TcpFlow, dict[str, str]] | None = None, more: list[ServedMn] | None = None) -> None:
        self.agent = agent
        #: the TCP connection from the MN's home address, and where its ends' traces go
        self.tcp = tcp
        self.identity = identity
        #: every MN served, the first (``identity``) included, by identity
        self.served = {identity: ServedMn(identity, mobility_key, home, tuple(probes.ends), dict(outputs or {}),
                                          probes)}
        self.served.update({mn.identity: mn for mn in more or ()})
        # with a key, only the MN's own, fresh Binding Updates move its binding (RFC 4285)
        self.address = address
        keys = {mn.identity: mn.mobility_key for mn in self.served.values() if mn.mobility_key}
        self.cache = mobility.BindingCache(keys or None, ha=address)
        self.decode_errors = 0
        self.sock = mobility.mobility_socket()
        agent.add_reader(self.sock, self._receive)
        serve(agent, self, HaControl)

    def _served(self, identity: str | None) -> ServedMn:
        served = self.served.get(identity or self.identity)
        if served is None:
            raise AgentError(f"no MN {identity!r} is served here")
        return served

    def binding(self, identity: str | None = None) -> dict:
        identity = self._served(identity).identity
        return {"care_of": self.cache.care_of(identity), "decode_errors": self.decode_errors,
                "sequence": self.cache.last_sequence(identity),
                "refused": {str(status): count for status, count in self.cache.refused.items()}}

    def pace_probes(self, identities: list[str], every: int) -> dict:
        """The listed MNs' probes in one slot of ``every`` of their sender (0: none)."""
        for identity in identities:
            served = self._served(identity)
            if served.streams is not None:
                served.streams.pace(list(served.ends), int(every))
        return {"paced": len(identities)}

    def lateness(self, start_ns: int, end_ns: int, identity: str | None = None) -> dict:
        served = self._served(identity)
        return {end.role: send_lateness_ms(end.sent_ns, end.sent_late_us, int(start_ns), int(end_ns))
                for end in served.ends}

    def arrivals(self, since_ns: int, identity: str | None = None) -> dict:
        served = self._served(identity)
        return {end.role: end.arrivals(since_ns) for end in served.ends}

    def checkpoint(self) -> dict:
        rows = sum(end.checkpoint(path) for mn in self.served.values() for end, path in mn.outputs.items())
        if self.tcp is not None:
            rows += self.tcp[0].checkpoint(self.tcp[1])
        return {"rows": rows}

    def _align_home(self, home: HaHomePath) -> None:
        try:
            home.align()
        except HomePathError as error:
            self.agent.trace(TraceEvent.HOME_PATH_FAILED, care_of=home.care_of, error=str(error))

    def tcp_reconnect(self) -> dict:
        if self.tcp is None:
            return {"connections": 0}
        try:
            self.tcp[0].reconnect()
        except TcpFlowError as error:  # the flow stays down; its trace and the report say so
            self.agent.trace(TraceEvent.TCP_FLOW_FAILED, error=str(error))
        return {"connections": self.tcp[0].connections}

    def _receive(self) -> None:
        try:
            received = mobility.receive(self.sock)
        except mobility.MobilityDecodeError as error:
            self.decode_errors += 1
            self.agent.trace(TraceEvent.MH_DECODE_ERROR, source=error.source, error=str(error))
            return
        if received is None:
            return
        message, care_of = received
        if not isinstance(message, mobility.BindingUpdate):
            return
        status = self.cache.update(message, care_of)
        if status not in (mobility.BA_STATUS_ACCEPTED, mobility.BA_STATUS_SEQUENCE_OUT_OF_WINDOW):
            self.agent.trace(TraceEvent.BU_REFUSED, source=care_of, seq=message.sequence,
                             identity=message.identity, status=status)
        self.agent.trace(TraceEvent.BU_RECEIVED, source=care_of, seq=message.sequence, identity=message.identity,
                         status=status)
        served = self.served.get(message.identity)
        home = served.home if served is not None else None
        if status == mobility.BA_STATUS_ACCEPTED and home is not None:
            try:  # the home address follows the binding; the other tunnels once the Ack is out
                tunnel = home.point_to(care_of)
                self.agent.trace(TraceEvent.HOME_PATH_MOVED, care_of=care_of, tunnel=tunnel,
                                 identity=message.identity)
                self.agent.defer("align the home tunnels", lambda: self._align_home(home))
            except HomePathError as error:  # the downlink is cut off: the traffic check says so
                self.agent.trace(TraceEvent.HOME_PATH_FAILED, care_of=care_of, error=str(error))
        if message.acknowledge:
            # RFC 6275 §9.5.1: a BU out of window is answered with the last accepted sequence number
            last = self.cache.last_sequence(message.identity)
            sequence = last if status == mobility.BA_STATUS_SEQUENCE_OUT_OF_WINDOW and last is not None \
                else message.sequence
            ack = mobility.BindingAck(sequence=sequence, status=status, lifetime_s=message.lifetime_s)
            # authenticated with the MN's key, and carrying the timestamp of the BU it answers: the
            # MN believes an Ack only for a BU it sent (RFC 4285)
            key = served.mobility_key if served is not None else None
            encoded = ack.encode(key, care_of, self.address, timestamp=message.protection.timestamp) if key \
                else ack.encode()
            handed_over = time.monotonic_ns()  # before the send: see Agent.trace
            self.sock.sendto(encoded, (care_of, 0))
            self.agent.trace(TraceEvent.BA_SENT, t_ns=handed_over, destination=care_of, seq=message.sequence,
                             status=status, bytes=len(encoded))


def _more_mns(path: str | None, bind: str, size: int) -> tuple[list[ServedMn], ProbeStreams | None]:
    """The MNs after the first, as the runner lists them: each with its key, its own tunnels at the
    HA, and a probe stream of its own, all sent by one sender (one wake per slot for every MN, at
    their common rate, which may be lower than the first MN's during storms)."""
    if not path:
        return [], None
    with open(path) as handle:
        specs = json.load(handle)
    served = []
    # one netlink socket and one dump of the tunnels for every MN's home path (a dump per MN would
    # decode every MN's tunnels again for each)
    ipr = IPRoute()
    known = home_path.tunnels(ipr)
    for spec in specs:
        namespace = spec["namespace"]
        own_port = int(spec["port"])  # the HA's end of each MN's stream binds a port of its own
        ha_end = ProbeEnd("ha", spec["home_address"], own_port, float(spec["probe_rate"]), size, bind_address=bind)
        mn_end = ProbeEnd("mn", bind, own_port, float(spec["probe_rate"]), size, bind_address=spec["home_address"],
                          namespace=namespace)
        served.append(ServedMn(spec["identity"], bytes.fromhex(spec["mobility_key"]) if spec.get("mobility_key")
                               else None, HaHomePath(bind, spec["home_address"], ipr, set(spec["tunnels"]), known),
                               (ha_end, mn_end), {ha_end: spec["ha_probe_out"], mn_end: spec["mn_probe_out"]}))
    if not served:
        return served, None
    streams = ProbeStreams([end for mn in served for end in mn.ends], one_receiver=True)
    # silent until the runner paces them (pace_probes): a hundred MNs' streams at full rate would
    # be ten times what the guest keeps up with, before anything is measured
    streams.pace(streams.ends, 0)
    for mn in served:
        mn.streams = streams
    return served, streams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--probe-out", required=True, help="the HA end's probe trace, written at the stop")
    parser.add_argument("--home-address", required=True, help="the MN's home address: the probes' peer")
    parser.add_argument("--mn-namespace", required=True, help="the MN's network namespace (a pid or a name)")
    parser.add_argument("--mn-probe-out", required=True, help="the MN end's probe trace")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--mobility-key", default=None, help="the MN-HA key (hex) of RFC 4285")
    parser.add_argument("--bind", required=True,
                        help="the HA's address: the source of its probes, the destination of the MN's")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--tcp-interval-ms", type=float, default=0.0,
                        help="a record each way on a TCP connection from the home address this often (0: none)")
    parser.add_argument("--tcp-out", default=None, help="the HA end's TCP trace")
    parser.add_argument("--mn-tcp-out", default=None, help="the MN end's TCP trace")
    parser.add_argument("--home-tunnels", default=None,
                        help="the HA's tunnels of the first MN, comma-separated (default: every tunnel from --bind)")
    parser.add_argument("--more-mns", default=None,
                        help="a JSON file listing more MNs to serve: identity, mobility_key, home_address, "
                             "namespace, tunnels (the HA's tunnel names of that MN), port, probe_rate, ha_probe_out, "
                             "mn_probe_out")
    arguments = parser.parse_args(argv)

    def run() -> None:
        agent = Agent("ha", arguments.control, arguments.trace)
        namespace = int(arguments.mn_namespace) if arguments.mn_namespace.isdigit() else arguments.mn_namespace
        ha_end = ProbeEnd("ha", arguments.home_address, arguments.port, arguments.rate, arguments.size,
                          bind_address=arguments.bind)
        mn_end = ProbeEnd("mn", arguments.bind, arguments.port, arguments.rate, arguments.size,
                          bind_address=arguments.home_address, namespace=namespace)
        probes = ProbeStreams([ha_end, mn_end])
        outputs = {ha_end: arguments.probe_out, mn_end: arguments.mn_probe_out}
        # a restarted agent (the runner's recovery) continues the records of the one before it
        probes.first_sequence = 1 + max(end.resume(path) for end, path in outputs.items())
        more, more_probes = _more_mns(arguments.more_mns, arguments.bind, arguments.size)
        # with more MNs, each MN's home path is its own tunnels only
        home = HaHomePath(arguments.bind, arguments.home_address,
                          names=set(arguments.home_tunnels.split(",")) if arguments.home_tunnels else None)
        tcp = None
        if arguments.tcp_interval_ms > 0:
            try:  # an application's view next to the probes' (nodes.tcp_flow)
                flow = TcpFlow(None, namespace, arguments.bind, arguments.home_address,
                               interval_ms=arguments.tcp_interval_ms)
            except TcpFlowError as error:
                agent.trace(TraceEvent.TCP_FLOW_FAILED, error=str(error))
            else:
                tcp_outputs = {"ha": arguments.tcp_out, "mn": arguments.mn_tcp_out}
                flow.resume(tcp_outputs)
                tcp = (flow, tcp_outputs)
        HomeAgent(agent, probes, ha_end, arguments.identity, outputs,
                  bytes.fromhex(arguments.mobility_key) if arguments.mobility_key else None, arguments.bind,
                  home, tcp, more)
        probes.start()
        if more_probes is not None:
            more_probes.start()
        if tcp is not None:
            tcp[0].start()
        try:
            agent.run()
        finally:
            if more_probes is not None:
                more_probes.stop()
            for served in more:
                for end, path in served.outputs.items():
                    end.write(path)
            probes.stop()
            if tcp is not None:
                tcp[0].stop()
                tcp[0].write(tcp[1])
            ha_end.write(arguments.probe_out)
            mn_end.write(arguments.mn_probe_out)

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
