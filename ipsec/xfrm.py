"""Linux XFRM (SAD/SPD) over netlink, with the context values of ``context.py``.

A raw ``AF_NETLINK``/``NETLINK_XFRM`` socket carries the messages declared in
``xfrm_messages.py``; nothing here runs ``ip xfrm``.  Every kernel refusal
becomes ``XfrmError(errno, operation)``.

Network namespaces: a socket stays in the namespace it was created in, so
``Xfrm(netns="name")`` creates its socket in a short-lived thread that first
joined ``/var/run/netns/name`` (``setns`` changes only the calling thread).
The process itself never changes namespace and needs no helper process.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pyroute2.netns import setns

from .addresses import AF_INET6, address_to_bytes, family_of
from .context import (
    IF_ID,
    POLICY_MEMBERS,
    SA_ATTRIBUTES,
    SA_MEMBERS,
    Algorithm,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
)
from .errors import XfrmError
from .layout import Member, from_struct, nest, raw_fields, text_fields, to_struct, unnest, xfrm_value
from .xfrm_messages import (
    IPPROTO_ESP,
    NETLINK_XFRM,
    XFRM_AE_LVAL,
    XFRM_AE_RVAL,
    XFRM_BODY_BY_TYPE,
    XFRM_MODE_TUNNEL,
    XFRM_MSG_ALLOCSPI,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_FLUSHPOLICY,
    XFRM_MSG_FLUSHSA,
    XFRM_MSG_GETAE,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_MIGRATE,
    XFRM_MSG_NAMES,
    XFRM_MSG_NEWAE,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDPOLICY,
    XFRM_MSG_UPDSA,
    _xfrm_body,
    xfrm_aevent_id,
    xfrm_user_migrate,
    xfrm_userpolicy_id,
    xfrm_userpolicy_info,
    xfrm_usersa_id_msg,
    xfrm_usersa_info,
    xfrm_userspi_info,
)

NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270

_NLMSGHDR = struct.Struct("=IHHII")


class xfrm_dump_request(_xfrm_body):
    """A GETSA/GETPOLICY dump: the kernel parses attributes right after the
    netlink header (``nlmsg_parse(cb->nlh, 0, ...)``), so there is no body."""

    fields = ()


@xfrm_value(
    xfrm_user_migrate,
    required=("old_daddr", "old_saddr", "new_daddr", "new_saddr"),
    proto=IPPROTO_ESP,
    mode=XFRM_MODE_TUNNEL,
    old_family=AF_INET6,
    new_family=AF_INET6,
)
class Migration:
    """One ``struct xfrm_user_migrate``: old SA/template addresses -> new
    (old_daddr, old_saddr, new_daddr, new_saddr, proto, mode, reqid,
    old_family, new_family)."""

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        old_daddr: str
        old_saddr: str
        new_daddr: str
        new_saddr: str
        proto: int = IPPROTO_ESP
        mode: int = XFRM_MODE_TUNNEL
        reqid: int = 0
        old_family: int = AF_INET6
        new_family: int = AF_INET6


# --- value <-> message dict ------------------------------------------------------
#
# The structures' values convert with layout.to_struct / from_struct; the SA
# and policy fields with the bindings of context.py (SA_MEMBERS, ...).  Only
# what has no structure of its own in the kernel is written out here:
# algorithms, replay state, templates and the optional attributes.

_ALGORITHM_ATTRIBUTES = {
    "aead": "XFRMA_ALG_AEAD",
    "crypt": "XFRMA_ALG_CRYPT",
    "auth_trunc": "XFRMA_ALG_AUTH_TRUNC",
    "auth": "XFRMA_ALG_AUTH",
    "comp": "XFRMA_ALG_COMP",
}  # in the order an SA's algorithms are read back
_ALGORITHM_BITS = {"auth_trunc": "alg_trunc_len", "aead": "alg_icv_len"}


#: an attribute of a message to send: (its XFRMA_ name, its value as pyroute2 encodes it)
Attribute = tuple[str, object]


def _algorithm_attribute(algorithm: Algorithm) -> tuple[str, dict[str, object]]:
    head: dict[str, object] = {
        "alg_name": algorithm.name.encode("ascii"),
        "alg_key_len": 8 * len(algorithm.key),
        "alg_key": algorithm.key,
    }
    if algorithm.kind in _ALGORITHM_BITS:
        head[_ALGORITHM_BITS[algorithm.kind]] = algorithm.bits
    return _ALGORITHM_ATTRIBUTES[algorithm.kind], head


def _algorithms_from_message(msg: _xfrm_body) -> tuple[Algorithm, ...]:
    algorithms = []
    for kind, attribute in _ALGORITHM_ATTRIBUTES.items():
        raw = msg.get_attr(attribute)
        # The kernel reports an auth algorithm twice (AUTH and AUTH_TRUNC);
        # AUTH_TRUNC is the complete one.
        if raw is None or (kind == "auth" and msg.get_attr("XFRMA_ALG_AUTH_TRUNC") is not None):
            continue
        key = raw["alg_key"][: (raw["alg_key_len"] + 7) // 8]
        name = raw["alg_name"].split(b"\0", 1)[0].decode("ascii")
        bits = raw[_ALGORITHM_BITS[kind]] if kind in _ALGORITHM_BITS else 0
        algorithms.append(Algorithm(kind, name, bytes(key), bits))
    return tuple(algorithms)


def _replay_attribute(replay: ReplayState) -> tuple[str, dict[str, object]]:
    if replay.esn_attr:
        bmp = struct.pack(f"={len(replay.bitmap)}I", *replay.bitmap)
        return "XFRMA_REPLAY_ESN_VAL", {
            "bmp_len": len(replay.bitmap),
            "oseq": replay.oseq & 0xFFFFFFFF,
            "seq": replay.seq & 0xFFFFFFFF,
            "oseq_hi": replay.oseq >> 32,
            "seq_hi": replay.seq >> 32,
            "replay_window": replay.window,
            "bmp": bmp,
        }
    return "XFRMA_REPLAY_VAL", {
        "oseq": replay.oseq & 0xFFFFFFFF,
        "seq": replay.seq & 0xFFFFFFFF,
        "bitmap": replay.bitmap[0] if replay.bitmap else 0,
    }


def _replay_from_message(msg: _xfrm_body, legacy_window: int) -> ReplayState:
    esn = msg.get_attr("XFRMA_REPLAY_ESN_VAL")
    if esn is not None:
        words = esn["bmp_len"]
        bitmap = struct.unpack_from(f"={words}I", esn["bmp"]) if words else ()
        return ReplayState(
            oseq=esn["oseq_hi"] << 32 | esn["oseq"],
            seq=esn["seq_hi"] << 32 | esn["seq"],
            bitmap=tuple(bitmap),
            window=esn["replay_window"],
            esn_attr=True,
        )
    legacy = msg.get_attr("XFRMA_REPLAY_VAL") or {"oseq": 0, "seq": 0, "bitmap": 0}
    return ReplayState(legacy["oseq"], legacy["seq"], (legacy["bitmap"],), legacy_window, False)


def _mark_attrs(mark: Mark | None) -> list[Attribute]:
    return [("XFRMA_MARK", to_struct(mark))] if mark is not None else []


def _optional_attrs(mark: Mark | None, if_id: int, value: object = None,
                    scalars: Iterable[Member] = ()) -> list[Attribute]:
    """The ``scalars`` of ``value`` that are non-zero, then the mark and the
    if_id, if set: the optional attributes of SAs, policies and requests."""
    attrs: list[Attribute] = [(m.path[0], getattr(value, m.name)) for m in scalars if getattr(value, m.name)]
    attrs += _mark_attrs(mark)
    if if_id:
        attrs.append((IF_ID.path[0], if_id))
    return attrs


def _optional_fields(msg: _xfrm_body, scalars: Iterable[Member] = ()) -> dict[str, Any]:
    """The reverse of ``_optional_attrs``: field -> value (0 / None when absent); keyword
    arguments of SecurityAssociation / SecurityPolicy, hence Any."""
    fields = {m.name: msg.get_attr(m.path[0]) or 0 for m in (*scalars, IF_ID)}
    mark = msg.get_attr("XFRMA_MARK")
    fields["mark"] = from_struct(Mark, mark) if mark is not None else None
    return fields


def _put(msg: _xfrm_body, fields: Iterable[Member], value: object) -> None:
    """Set the members ``fields`` (Members) of message ``msg`` from ``value``."""
    for key, nested in nest(fields, raw_fields(value, fields)).items():
        msg[key] = nested


def sa_to_message(sa: SecurityAssociation, message_class: type[_xfrm_body] = xfrm_usersa_info,
                  carry_current: bool = True) -> _xfrm_body:
    """The NEWSA/UPDSA body for ``sa``: keys, replay state and, when
    ``carry_current``, the used lifetime (XFRMA_LTIME_VAL)."""
    msg = message_class()
    msg["sel"] = to_struct(sa.selector)
    _put(msg, SA_MEMBERS, sa)
    msg["lft"] = to_struct(sa.lifetime)
    msg["curlft"] = to_struct(sa.current)
    msg["replay_window"] = 0 if sa.replay.esn_attr else sa.replay.window
    attrs: list[Attribute] = [_algorithm_attribute(algorithm) for algorithm in sa.algorithms]
    attrs.append(_replay_attribute(sa.replay))
    if carry_current and sa.current != LifetimeCurrent():
        current = sa.current
        if not current.add_time:
            # add_time 0 in XFRMA_LTIME_VAL would overwrite the kernel's stamp
            # and make every add-expiry fire at once.
            current = replace(current, add_time=int(time.time()))
        attrs.append(("XFRMA_LTIME_VAL", to_struct(current)))
    msg["attrs"] = attrs + _optional_attrs(sa.mark, sa.if_id, sa, SA_ATTRIBUTES)
    return msg


def sa_from_message(msg: _xfrm_body) -> SecurityAssociation:
    family = msg["family"]
    return SecurityAssociation(
        **text_fields(SA_MEMBERS, unnest(SA_MEMBERS, msg), family),
        algorithms=_algorithms_from_message(msg),
        selector=from_struct(Selector, msg["sel"], msg["sel"]["family"] or family),
        lifetime=from_struct(LifetimeConfig, msg["lft"]),
        current=from_struct(LifetimeCurrent, msg["curlft"]),
        replay=_replay_from_message(msg, msg["replay_window"]),
        **_optional_fields(msg, SA_ATTRIBUTES),
    )


def policy_to_message(policy: SecurityPolicy) -> xfrm_userpolicy_info:
    msg = xfrm_userpolicy_info()
    msg["sel"] = to_struct(policy.selector)
    msg["lft"] = to_struct(policy.lifetime)
    msg["curlft"] = {}
    _put(msg, POLICY_MEMBERS, policy)
    attrs: list[Attribute] = []
    if policy.templates:
        attrs.append(("XFRMA_TMPL", [to_struct(t) for t in policy.templates]))
    msg["attrs"] = attrs + _optional_attrs(policy.mark, policy.if_id)
    return msg


def policy_from_message(msg: _xfrm_body) -> SecurityPolicy:
    templates = [from_struct(Template, t, t["family"] or AF_INET6) for t in msg.get_attr("XFRMA_TMPL") or ()]
    sel_family = msg["sel"]["family"] or (templates[0].family if templates else AF_INET6)
    return SecurityPolicy(
        **unnest(POLICY_MEMBERS, msg),
        selector=from_struct(Selector, msg["sel"], sel_family),
        templates=tuple(templates),
        lifetime=from_struct(LifetimeConfig, msg["lft"]),
        **_optional_fields(msg),
    )


# --- the socket ----------------------------------------------------------------------


def _open_xfrm_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    except OSError:
        pass
    sock.bind((0, 0))
    return sock


def _open_socket_in_netns(netns: str) -> socket.socket:
    """Create the socket from a thread that joined ``netns``; the thread ends
    right after, the socket keeps the namespace."""
    result: dict[str, Any] = {}  # "socket" or "error"

    def create() -> None:
        try:
            setns(netns, flags=0)
            result["socket"] = _open_xfrm_socket()
        except BaseException as error:  # handed to the caller below
            result["error"] = error

    worker = threading.Thread(target=create, name=f"xfrm-setns-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    created: socket.socket = result["socket"]
    return created


#: Requests the kernel answers with a message of their own: asked without NLM_F_ACK, since an
#: acknowledgement would follow the answer (``netlink_rcv_skb``), one more datagram to read later.
#: A refusal comes either way.
ANSWERED = frozenset({XFRM_MSG_GETSA, XFRM_MSG_GETPOLICY, XFRM_MSG_GETAE, XFRM_MSG_ALLOCSPI})

#: One receive buffer per socket, allocated once. A kernel reply never exceeds it: a dump's
#: datagrams are at most 32 KiB (``netlink_recvmsg`` caps ``max_recvmsg_len``), an ack or a GET
#: answer a few KiB. Allocating a buffer per ``recv`` is what costs: ``recv(1 MiB)`` mapped and
#: unmapped a megabyte each time, about 0.7 ms in the UML guest, three times per batch.
RECEIVE_BUFFER = 1 << 16


class Xfrm:
    """One NETLINK_XFRM socket (optionally in a named netns) and the SAD/SPD
    operations the IPsec context needs."""

    def __init__(self, netns: str | None = None, sock: socket.socket | None = None) -> None:
        """``sock``: a netlink socket to use instead of opening one (a test's stand-in that records
        or counts what is sent); :attr:`sock` is the socket in use."""
        self.netns = netns
        self.sock = sock if sock is not None else (_open_socket_in_netns(netns) if netns else _open_xfrm_socket())
        self._sequence = 0
        self._buffer = bytearray(RECEIVE_BUFFER)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Xfrm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---

    def _receive(self, operation: str) -> bytes:
        """One datagram from the kernel, into the socket's buffer; one that does not fit is an
        error (EMSGSIZE), never a silently truncated reply."""
        length = self.sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
        if length > len(self._buffer):
            raise XfrmError(90, operation, f"a {length}-octet reply exceeds the receive buffer")  # EMSGSIZE
        return bytes(memoryview(self._buffer)[:length])

    def _messages(self, operation: str) -> Iterator[tuple[int, int, int, bytes]]:
        """The netlink messages of the next datagram from the kernel: (type, flags, sequence, the
        message's octets)."""
        data = self._receive(operation)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, reply_type, reply_flags, sequence, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise XfrmError(71, operation, "truncated netlink reply")  # EPROTO
            yield reply_type, reply_flags, sequence, data[offset:offset + length]
            offset += (length + 3) & ~3

    def _sequence_next(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF or 1
        return self._sequence

    def _send(self, msg_type: int, body: _xfrm_body, flags: int) -> int:
        sequence = self._sequence_next()
        body["header"]["type"] = msg_type
        body["header"]["flags"] = flags
        body["header"]["sequence_number"] = sequence
        body["header"]["pid"] = 0
        body.encode()
        self.sock.send(bytes(body.data))
        return sequence

    def _request(
        self,
        msg_type: int,
        body: _xfrm_body,
        flags: int = 0,
        dump: bool = False,
        prefilter: tuple[bytes, ...] | None = None,
    ) -> list[_xfrm_body]:
        """Send one request; return the decoded reply bodies (a dump's, or
        GET's single answer).  An error reply raises XfrmError.  With
        ``prefilter``, dump replies whose raw bytes contain none of its byte
        strings are skipped without decoding (decoding is what costs in a big dump)."""
        operation = XFRM_MSG_NAMES.get(msg_type, str(msg_type))
        flags |= NLM_F_REQUEST | (NLM_F_DUMP if dump else 0 if msg_type in ANSWERED else NLM_F_ACK)
        sequence = self._send(msg_type, body, flags)
        replies: list[_xfrm_body] = []
        while True:
            for reply_type, reply_flags, reply_seq, chunk in self._messages(operation):
                if reply_seq != sequence:
                    continue
                if reply_type == NLMSG_DONE:
                    return replies
                if reply_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", chunk, _NLMSGHDR.size)
                    if code == 0:
                        return replies
                    raise XfrmError(-code, operation, _extack_message(chunk, reply_flags))
                body_class = XFRM_BODY_BY_TYPE.get(reply_type)
                if body_class is None or (prefilter is not None and not any(p in chunk for p in prefilter)):
                    continue
                reply = body_class(chunk)
                reply.decode()
                replies.append(reply)
                if not dump:  # the answer (ANSWERED: no ACK was asked for)
                    return replies

    # --- batches: requests encoded in advance, sent in one go ---

    def _write(self, requests: list[bytes]) -> list[int]:
        """Requests encoded by :meth:`encode_request` in one write, each with its own sequence
        number (returned, in order); none but the last asks for an acknowledgement."""
        data = bytearray()
        sequences = []
        for position, request in enumerate(requests):
            chunk = bytearray(request)
            sequences.append(self._sequence_next())
            struct.pack_into("=I", chunk, 8, sequences[-1])  # nlmsg_seq
            if position < len(requests) - 1:
                (flags,) = struct.unpack_from("=H", chunk, 6)
                struct.pack_into("=H", chunk, 6, flags & ~NLM_F_ACK)  # nlmsg_flags
            data += chunk
        self.sock.send(bytes(data))
        return sequences

    @staticmethod
    def encode_request(msg_type: int, body: _xfrm_body, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
        """A request's bytes, encoded once (ahead of time) for :meth:`send_batch`; its sequence
        number is set when it is sent."""
        body["header"]["type"] = msg_type
        body["header"]["flags"] = flags
        body["header"]["sequence_number"] = 0
        body["header"]["pid"] = 0
        body.encode()
        data = bytes(body.data)
        return data + bytes(-len(data) % 4)

    def send_batch(self, requests: list[bytes]) -> list[XfrmError | None]:
        """Send requests encoded by :meth:`encode_request` in one write; the kernel handles them
        in order. Returns each one's outcome (None, or its error): unlike :meth:`_request`, a
        failure does not stop the ones after it, so the caller undoes what succeeded. One system
        call instead of one per request: in the UML guest, where a system call costs tens of
        microseconds, this is most of a handover's kernel time.

        Only the last request asks for an acknowledgement: the kernel reports a failure whether
        or not it was asked to (``netlink_rcv_skb``), and in order, so once the last one is
        answered every earlier failure has been received, and the rest succeeded. One reply to
        read instead of one per request."""
        if not requests:
            return []
        sequences = self._write(requests)
        outcomes: dict[int, XfrmError | None] = {}
        wanted = set(sequences)
        while sequences[-1] not in outcomes:
            for reply_type, reply_flags, sequence, chunk in self._messages("batch"):
                if reply_type != NLMSG_ERROR or sequence not in wanted:
                    continue
                (code,) = struct.unpack_from("=i", chunk, _NLMSGHDR.size)
                request_type = struct.unpack_from("=H", requests[sequences.index(sequence)], 4)[0]
                outcomes[sequence] = None if code == 0 else XfrmError(
                    -code, XFRM_MSG_NAMES.get(request_type, str(request_type)), _extack_message(chunk, reply_flags))
        return [outcomes.get(sequence) for sequence in sequences]

    def encode_add_sa(self, sa: SecurityAssociation, carry_current: bool = True) -> bytes:
        return self.encode_request(XFRM_MSG_NEWSA, sa_to_message(sa, carry_current=carry_current))

    def encode_add_policy(self, policy: SecurityPolicy) -> bytes:
        return self.encode_request(XFRM_MSG_NEWPOLICY, policy_to_message(policy))

    def encode_update_policy(self, policy: SecurityPolicy) -> bytes:
        return self.encode_request(XFRM_MSG_UPDPOLICY, policy_to_message(policy))

    def encode_delete_sa(self, sa: SecurityAssociation) -> bytes:
        return self.encode_request(XFRM_MSG_DELSA, self._usersa_id(sa.daddr, sa.spi, sa.proto, sa.mark))

    # --- SAs ---

    def add_sa(self, sa: SecurityAssociation, carry_current: bool = True) -> None:
        """XFRM_MSG_NEWSA, with keys, replay state (XFRMA_REPLAY[_ESN]_VAL) and
        the used lifetime (XFRMA_LTIME_VAL) in the same message."""
        self._request(XFRM_MSG_NEWSA, sa_to_message(sa, carry_current=carry_current))

    def update_sa(self, sa: SecurityAssociation, carry_current: bool = True) -> None:
        """XFRM_MSG_UPDSA: replace an SA with the same (daddr, SPI, proto),
        e.g. the larval SA that XFRM_MSG_ALLOCSPI created."""
        self._request(XFRM_MSG_UPDSA, sa_to_message(sa, carry_current=carry_current))

    def _usersa_id(self, daddr: str, spi: int, proto: int, mark: Mark | None) -> xfrm_usersa_id_msg:
        msg = xfrm_usersa_id_msg()
        msg["daddr"] = address_to_bytes(daddr)
        msg["spi"] = spi
        msg["family"] = family_of(daddr)
        msg["proto"] = proto
        msg["attrs"] = _mark_attrs(mark)
        return msg

    def get_sa(
        self, daddr: str, spi: int, proto: int = IPPROTO_ESP, mark: Mark | None = None
    ) -> SecurityAssociation:
        (reply,) = self._request(XFRM_MSG_GETSA, self._usersa_id(daddr, spi, proto, mark))
        return sa_from_message(reply)

    def get_sas(self, sas: Iterable[SecurityAssociation]) -> list[SecurityAssociation]:
        """Each SA as the kernel holds it now (found by destination, SPI, protocol and mark), all
        asked in one write and answered in order: one round trip, not one per SA. An SA that is
        gone raises its XfrmError (ENOENT, ESRCH) once every answer is in."""
        found, _ = self.get_entries(sas, ())
        for answer in found:
            if isinstance(answer, XfrmError):
                raise answer
        return cast(list[SecurityAssociation], found)

    def get_entries(
        self, sas: Iterable[SecurityAssociation], policies: Iterable[SecurityPolicy]
    ) -> tuple[list[SecurityAssociation | XfrmError], list[SecurityPolicy | XfrmError]]:
        """Targeted look-ups, no dump: each SA by its kernel key (XFRM_MSG_GETSA: destination,
        SPI, protocol, mark) and each policy by its own (XFRM_MSG_GETPOLICY: selector, direction,
        mark, if_id), all in one write, answered in order; each answer is the entry as the kernel
        holds it now, or the XfrmError that refused it (ENOENT, ESRCH: gone). The kernel finds
        each in its hash tables, so the cost does not grow with the tables' size (a policy
        below the hash thresholds is found in the kernel's inexact bins)."""
        requests = [self.encode_request(XFRM_MSG_GETSA, self._usersa_id(sa.daddr, sa.spi, sa.proto, sa.mark),
                                        NLM_F_REQUEST) for sa in sas]  # answered: no ACK
        count_sas = len(requests)
        requests += [self.encode_request(XFRM_MSG_GETPOLICY,
                                         self._userpolicy_id(p.selector, p.dir, p.mark, p.if_id), NLM_F_REQUEST)
                     for p in policies]
        if not requests:
            return [], []
        sequences = self._write(requests)
        wanted = set(sequences)
        answers: dict[int, SecurityAssociation | SecurityPolicy | XfrmError] = {}
        while len(answers) < len(sequences):
            for reply_type, reply_flags, sequence, chunk in self._messages("XFRM_MSG_GET"):
                if sequence not in wanted or sequence in answers:
                    continue
                if reply_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", chunk, _NLMSGHDR.size)
                    request_type = struct.unpack_from("=H", requests[sequences.index(sequence)], 4)[0]
                    answers[sequence] = XfrmError(-code or 71, XFRM_MSG_NAMES.get(request_type, str(request_type)),
                                                  _extack_message(chunk, reply_flags))
                elif reply_type == XFRM_MSG_NEWSA:
                    sa_reply = xfrm_usersa_info(chunk)
                    sa_reply.decode()
                    answers[sequence] = sa_from_message(sa_reply)
                elif reply_type == XFRM_MSG_NEWPOLICY:
                    policy_reply = xfrm_userpolicy_info(chunk)
                    policy_reply.decode()
                    answers[sequence] = policy_from_message(policy_reply)
        ordered = [answers[sequence] for sequence in sequences]
        return (cast(list[SecurityAssociation | XfrmError], ordered[:count_sas]),
                cast(list[SecurityPolicy | XfrmError], ordered[count_sas:]))

    def delete_sa(
        self, daddr: str, spi: int, proto: int = IPPROTO_ESP, mark: Mark | None = None
    ) -> None:
        self._request(XFRM_MSG_DELSA, self._usersa_id(daddr, spi, proto, mark))

    def dump_sas(
        self,
        saddr: str | None = None,
        daddr: str | None = None,
        proto: int | None = None,
    ) -> list[SecurityAssociation]:
        """All SAs, or those whose source and/or destination is exactly the
        given address (XFRMA_ADDRESS_FILTER, filtered in the kernel)."""
        request = xfrm_dump_request()
        attrs: list[Attribute] = []
        if saddr is not None or daddr is not None:
            family = family_of(cast(str, saddr or daddr))  # one of them is given
            full = 128 if family == AF_INET6 else 32
            attrs.append(
                (
                    "XFRMA_ADDRESS_FILTER",
                    {
                        "saddr": address_to_bytes(saddr) if saddr else b"",
                        "daddr": address_to_bytes(daddr) if daddr else b"",
                        "family": family,
                        "splen": full if saddr else 0,
                        "dplen": full if daddr else 0,
                    },
                )
            )
        if proto is not None:
            attrs.append(("XFRMA_PROTO", proto))
        request["attrs"] = attrs
        replies = self._request(XFRM_MSG_GETSA, request, dump=True)
        return [sa_from_message(reply) for reply in replies]

    def allocate_spi(
        self,
        daddr: str,
        saddr: str,
        proto: int = IPPROTO_ESP,
        mode: int = XFRM_MODE_TUNNEL,
        reqid: int = 0,
        spi_min: int = 0x100,
        spi_max: int = 0xFFFFFFFF,
        mark: Mark | None = None,
    ) -> int:
        """XFRM_MSG_ALLOCSPI: the kernel picks an unused SPI for
        (daddr, proto) and holds it in a larval SA until XFRM_MSG_UPDSA
        fills it in (or it times out after XFRM_ACQ_EXPIRES)."""
        msg = xfrm_userspi_info()
        family = family_of(daddr)
        msg["info"] = {
            "sel": {"family": family},
            "id": {"daddr": address_to_bytes(daddr), "proto": proto},
            "saddr": address_to_bytes(saddr),
            "reqid": reqid,
            "family": family,
            "mode": mode,
        }
        msg["min"] = spi_min
        msg["max"] = spi_max
        msg["attrs"] = _mark_attrs(mark)
        (reply,) = self._request(XFRM_MSG_ALLOCSPI, msg)
        spi: int = reply["id"]["spi"]
        return spi

    def _aevent_id(self, sa: SecurityAssociation, flags: int) -> xfrm_aevent_id:
        msg = xfrm_aevent_id()
        msg["sa_id"] = {
            "daddr": address_to_bytes(sa.daddr),
            "spi": sa.spi,
            "family": sa.family,
            "proto": sa.proto,
        }
        msg["saddr"] = address_to_bytes(sa.saddr)
        msg["flags"] = flags
        msg["reqid"] = sa.reqid
        return msg

    def get_replay(self, sa: SecurityAssociation) -> tuple[ReplayState, LifetimeCurrent]:
        """XFRM_MSG_GETAE: the live replay/sequence state and used lifetime."""
        msg = self._aevent_id(sa, XFRM_AE_RVAL | XFRM_AE_LVAL)
        msg["attrs"] = _mark_attrs(sa.mark)
        (reply,) = self._request(XFRM_MSG_GETAE, msg)
        lifetime = reply.get_attr("XFRMA_LTIME_VAL")
        return (
            _replay_from_message(reply, sa.replay.window),
            from_struct(LifetimeCurrent, lifetime) if lifetime else LifetimeCurrent(),
        )

    def set_replay(
        self,
        sa: SecurityAssociation,
        replay: ReplayState,
        current: LifetimeCurrent | None = None,
    ) -> None:
        """XFRM_MSG_NEWAE (needs NLM_F_REPLACE): overwrite an installed SA's
        replay/sequence state (ESN included) and optionally its used lifetime."""
        msg = self._aevent_id(sa, XFRM_AE_RVAL | (XFRM_AE_LVAL if current else 0))
        attrs: list[Attribute] = [_replay_attribute(replay)]
        if current is not None:
            attrs.append(("XFRMA_LTIME_VAL", to_struct(current)))
        msg["attrs"] = attrs + _mark_attrs(sa.mark)
        self._request(XFRM_MSG_NEWAE, msg, flags=NLM_F_REPLACE)

    def flush_sas(self, proto: int = 0) -> None:
        msg = XFRM_BODY_BY_TYPE[XFRM_MSG_FLUSHSA]()
        msg["proto"] = proto
        self._request(XFRM_MSG_FLUSHSA, msg)

    # --- policies ---

    def add_policy(self, policy: SecurityPolicy) -> None:
        self._request(XFRM_MSG_NEWPOLICY, policy_to_message(policy))

    def update_policy(self, policy: SecurityPolicy) -> None:
        """XFRM_MSG_UPDPOLICY: add, or replace the policy with the same
        selector and direction."""
        self._request(XFRM_MSG_UPDPOLICY, policy_to_message(policy))

    def _userpolicy_id(self, selector: Selector, direction: int, mark: Mark | None, if_id: int,
                       index: int = 0) -> xfrm_userpolicy_id:
        msg = xfrm_userpolicy_id()
        msg["sel"] = to_struct(selector)
        msg["index"] = index
        msg["dir"] = direction
        msg["attrs"] = _optional_attrs(mark, if_id)
        return msg

    def get_policy(
        self, selector: Selector, direction: int, mark: Mark | None = None, if_id: int = 0
    ) -> SecurityPolicy:
        (reply,) = self._request(
            XFRM_MSG_GETPOLICY, self._userpolicy_id(selector, direction, mark, if_id)
        )
        return policy_from_message(reply)

    def delete_policy(
        self, selector: Selector, direction: int, mark: Mark | None = None, if_id: int = 0
    ) -> None:
        self._request(XFRM_MSG_DELPOLICY, self._userpolicy_id(selector, direction, mark, if_id))

    def dump_policies(self, mentioning: str | Iterable[str] | None = None) -> list[SecurityPolicy]:
        """All policies; with ``mentioning`` (an address or several), only
        those whose raw message contains one of them (a superset of those
        naming it; filter after)."""
        request = xfrm_dump_request()
        request["attrs"] = []
        if isinstance(mentioning, str):
            mentioning = (mentioning,)
        prefilter = None if mentioning is None else tuple(address_to_bytes(a) for a in mentioning)
        replies = self._request(XFRM_MSG_GETPOLICY, request, dump=True, prefilter=prefilter)
        return [policy_from_message(reply) for reply in replies]

    def flush_policies(self) -> None:
        msg = XFRM_BODY_BY_TYPE[XFRM_MSG_FLUSHPOLICY]()
        msg["attrs"] = []
        self._request(XFRM_MSG_FLUSHPOLICY, msg)

    # --- migrate ---

    def migrate(
        self,
        selector: Selector,
        direction: int,
        migrations: list[Migration] | tuple[Migration, ...],
    ) -> None:
        """XFRM_MSG_MIGRATE: move the policy's templates and the matching SAs
        to new addresses in one kernel step (SPI, keys, replay state and used
        lifetime kept; the old SAs are gone when it returns)."""
        msg = self._userpolicy_id(selector, direction, None, 0)
        entries = [to_struct(migration) for migration in migrations]
        msg["attrs"] = [("XFRMA_MIGRATE", entries)]
        self._request(XFRM_MSG_MIGRATE, msg)

    def encode_delete_policy(self, selector: Selector, direction: int, mark: Mark | None = None,
                             if_id: int = 0) -> bytes:
        return self.encode_request(XFRM_MSG_DELPOLICY, self._userpolicy_id(selector, direction, mark, if_id))


def _extack_message(chunk: bytes, flags: int) -> str:
    """The kernel's extended-ack text (NLMSGERR_ATTR_MSG), if any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    offset = _NLMSGHDR.size + 4
    (original_length,) = struct.unpack_from("=I", chunk, offset)
    offset += (original_length + 3) & ~3 if not flags & 0x100 else _NLMSGHDR.size
    while offset + 4 <= len(chunk):
        length, kind = struct.unpack_from("=HH", chunk, offset)
        if length < 4:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return chunk[offset + 4 : offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return ""
