"""The HA agent: binding cache fed by Binding Updates, and the probe streams.

The HA sends its probes to the care-of address its binding cache holds for the MN, so the
downlink resumes exactly when the HA has processed the MN's Binding Update (and the path to the
new care-of address, through the nAR and its IPsec state, works). The MN's end of the probes
runs here too, with its socket in the MN's namespace: one sender serves both ends (see
nodes.probe).
"""

from __future__ import annotations

import argparse
import sys
import time

from nodes import mobility
from nodes.agent import Agent, main_guard
from nodes.contracts import HaControl, TraceEvent, serve
from nodes.probe import DEFAULT_PORT, ProbeEnd, ProbeStreams


class HomeAgent:
    def __init__(self, agent: Agent, probes: ProbeStreams, probe: ProbeEnd, identity: str,
                 outputs: dict[ProbeEnd, str] | None = None, mobility_key: bytes | None = None,
                 address: str | None = None) -> None:
        self.agent = agent
        self.probe = probe
        self.identity = identity
        # with a key, only the MN's own, fresh Binding Updates move its binding (RFC 4285)
        self.mobility_key, self.address = mobility_key, address
        self.cache = mobility.BindingCache({identity: mobility_key} if mobility_key else None, ha=address)
        self.decode_errors = 0
        self.sock = mobility.mobility_socket()
        agent.add_reader(self.sock, self._receive)
        self.probes = probes
        self.outputs = outputs or {}
        serve(agent, self, HaControl)

    def binding(self) -> dict:
        return {"care_of": self.cache.care_of(self.identity), "decode_errors": self.decode_errors,
                "sequence": self.cache.last_sequence(self.identity),
                "refused": {str(status): count for status, count in self.cache.refused.items()}}

    def lateness(self, start_ns: int, end_ns: int) -> dict:
        return self.probes.lateness(start_ns, end_ns)

    def arrivals(self, since_ns: int) -> dict:
        return {end.role: end.arrivals(since_ns) for end in self.probes.ends}

    def checkpoint(self) -> dict:
        return {"rows": sum(end.checkpoint(path) for end, path in self.outputs.items())}

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
        if status == mobility.BA_STATUS_ACCEPTED and message.identity == self.identity:
            self.probe.peer = care_of  # the probe stream follows the binding
        if message.acknowledge:
            # RFC 6275 §9.5.1: a BU out of window is answered with the last accepted sequence number
            last = self.cache.last_sequence(message.identity)
            sequence = last if status == mobility.BA_STATUS_SEQUENCE_OUT_OF_WINDOW and last is not None \
                else message.sequence
            ack = mobility.BindingAck(sequence=sequence, status=status, lifetime_s=message.lifetime_s)
            # authenticated with the MN's key, and carrying the timestamp of the BU it answers: the
            # MN believes an Ack only for a BU it sent (RFC 4285)
            key = self.mobility_key if message.identity == self.identity else None
            encoded = ack.encode(key, care_of, self.address, timestamp=message.protection.timestamp) if key \
                else ack.encode()
            handed_over = time.monotonic_ns()  # before the send: see Agent.trace
            self.sock.sendto(encoded, (care_of, 0))
            self.agent.trace(TraceEvent.BA_SENT, t_ns=handed_over, destination=care_of, seq=message.sequence,
                             status=status, bytes=len(encoded))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--probe-out", required=True, help="the HA end's probe trace, written at the stop")
    parser.add_argument("--initial-peer", required=True, help="the MN's care-of address at start")
    parser.add_argument("--mn-namespace", required=True, help="the MN's network namespace (a pid or a name)")
    parser.add_argument("--mn-probe-out", required=True, help="the MN end's probe trace")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--mobility-key", default=None, help="the MN-HA key (hex) of RFC 4285")
    parser.add_argument("--bind", required=True,
                        help="the HA's address: the source of its probes, the destination of the MN's")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    arguments = parser.parse_args(argv)

    def run() -> None:
        agent = Agent("ha", arguments.control, arguments.trace)
        namespace = int(arguments.mn_namespace) if arguments.mn_namespace.isdigit() else arguments.mn_namespace
        ha_end = ProbeEnd("ha", arguments.initial_peer, arguments.port, arguments.rate, arguments.size,
                          bind_address=arguments.bind)
        mn_end = ProbeEnd("mn", arguments.bind, arguments.port, arguments.rate, arguments.size,
                          namespace=namespace)
        probes = ProbeStreams([ha_end, mn_end])
        outputs = {ha_end: arguments.probe_out, mn_end: arguments.mn_probe_out}
        # a restarted agent (the runner's recovery) continues the records of the one before it
        probes.first_sequence = 1 + max(end.resume(path) for end, path in outputs.items())
        HomeAgent(agent, probes, ha_end, arguments.identity, outputs,
                  bytes.fromhex(arguments.mobility_key) if arguments.mobility_key else None, arguments.bind)
        probes.start()
        try:
            agent.run()
        finally:
            probes.stop()
            ha_end.write(arguments.probe_out)
            mn_end.write(arguments.mn_probe_out)

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
