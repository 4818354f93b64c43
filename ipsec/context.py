"""The IPsec context of one Mobile Node, as values, and its wire layout.

Pure: no sockets, no clock.  ``IpsecContext.encode()`` gives the data of one
CXTP Context Data Block (CDB); ``decode()`` takes it back and raises
``ContextDecodeError`` for anything that is not a well-formed context.  The
layout is described field by field in ``docs/ipsec-context.md``.

Not in the context: the path MTU.  The kernel keeps it in the route/dst
cache, not in the XFRM SA state, so it cannot be read over XFRM netlink and
is learnt again on the nAR (PMTU discovery), as for any new path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, TypeVar

from .addresses import AF_INET, AF_INET6
from .errors import ContextDecodeError
from .layout import Member, Record, XfrmValue, attribute, bind, raw_fields, text_fields, xfrm_value
from .xfrm_messages import (
    IPPROTO_ESP,
    XFRM_INF,
    XFRM_MODE_TUNNEL,
    XFRM_POLICY_ALLOW,
    XFRMA_REPLAY_ESN_MAX,
    xfrm_lifetime_cfg,
    xfrm_lifetime_cur,
    xfrm_mark,
    xfrm_selector,
    xfrm_user_tmpl,
    xfrm_userpolicy_info,
    xfrm_usersa_info,
)

#: CXTP Feature Profile Type for the IPsec context.  IANA's registry (Expert
#: Review) holds only 0x0001; 0x8001 is far from it, in the upper half that
#: nobody allocates from, so a test deployment cannot clash with a future
#: assignment by accident.  Not an IANA value: see docs/ipsec-context.md.
IPSEC_CONTEXT_FPT = 0x8001
#: Version of the layout below; the first octet of the context data.
IPSEC_CONTEXT_VERSION = 1
#: A CDB is at most 255 * 8 = 2040 octets, 4 of them its header (no presence
#: vector is used), so the context data must not exceed this.
MAX_CONTEXT_DATA = 2036

ALGORITHM_KINDS = ("crypt", "auth", "auth_trunc", "aead", "comp")


# --- values ------------------------------------------------------------------------
#
# Selector, LifetimeConfig, LifetimeCurrent, Template and Mark are made from
# their declarations in xfrm_messages.py (layout.xfrm_value): their fields are
# the C members, in the order given, addresses as text.


@xfrm_value(xfrm_selector, family=AF_INET6)
class Selector:
    """``struct xfrm_selector``: which packets a policy (or SA) applies to.

    Fields: the members of ``xfrm_selector`` in declaration order (daddr,
    saddr, dport, ..., ifindex, user).
    """

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        daddr: str = "::"
        saddr: str = "::"
        dport: int = 0
        dport_mask: int = 0
        sport: int = 0
        sport_mask: int = 0
        family: int = AF_INET6
        prefixlen_d: int = 0
        prefixlen_s: int = 0
        proto: int = 0
        ifindex: int = 0
        user: int = 0


@xfrm_value(
    xfrm_lifetime_cfg,
    soft_byte_limit=XFRM_INF,
    hard_byte_limit=XFRM_INF,
    soft_packet_limit=XFRM_INF,
    hard_packet_limit=XFRM_INF,
)
class LifetimeConfig:
    """``struct xfrm_lifetime_cfg``; XFRM_INF bytes/packets and 0 seconds mean no limit."""

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        soft_byte_limit: int = XFRM_INF
        hard_byte_limit: int = XFRM_INF
        soft_packet_limit: int = XFRM_INF
        hard_packet_limit: int = XFRM_INF
        soft_add_expires_seconds: int = 0
        hard_add_expires_seconds: int = 0
        soft_use_expires_seconds: int = 0
        hard_use_expires_seconds: int = 0


@xfrm_value(xfrm_lifetime_cur)
class LifetimeCurrent:
    """``struct xfrm_lifetime_cur``: what the SA has used so far (bytes,
    packets, add_time, use_time).

    ``add_time`` / ``use_time`` are the holder's wall-clock seconds; together
    with ``IpsecContext.captured_at`` (same clock) they give ages that do not
    depend on the receiver's clock.
    """

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        bytes: int = 0
        packets: int = 0
        add_time: int = 0
        use_time: int = 0


@xfrm_value(
    xfrm_user_tmpl,
    largest_first=True,
    required=("daddr", "saddr"),
    proto=IPPROTO_ESP,
    family=AF_INET6,
    mode=XFRM_MODE_TUNNEL,
    aalgos=0xFFFFFFFF,
    ealgos=0xFFFFFFFF,
    calgos=0xFFFFFFFF,
)
class Template:
    """``struct xfrm_user_tmpl``: the SA a policy asks for.

    Fields: its members, ``id`` flattened (daddr, spi, proto), largest first:
    daddr, saddr, spi, reqid, aalgos, ealgos, calgos, family, proto, mode,
    share, optional.
    """

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        daddr: str
        saddr: str
        spi: int = 0
        reqid: int = 0
        aalgos: int = 0xFFFFFFFF
        ealgos: int = 0xFFFFFFFF
        calgos: int = 0xFFFFFFFF
        family: int = AF_INET6
        proto: int = IPPROTO_ESP
        mode: int = XFRM_MODE_TUNNEL
        share: int = 0
        optional: int = 0


@xfrm_value(xfrm_mark, renames={"v": "value", "m": "mask"})
class Mark:
    """``struct xfrm_mark`` (XFRMA_MARK): value and mask."""

    if TYPE_CHECKING:  # the fields xfrm_value makes of the declaration (see layout.py)
        xfrm_members: ClassVar[tuple[Member, ...]]
        value: int = 0
        mask: int = 0


@dataclass(frozen=True)
class Algorithm:
    """One of XFRMA_ALG_CRYPT / AUTH / AUTH_TRUNC / AEAD / COMP.

    ``bits`` is ``alg_trunc_len`` for ``auth_trunc``, ``alg_icv_len`` for
    ``aead``, unused (0) otherwise.  ``alg_key_len`` is ``8 * len(key)``.
    """

    kind: str
    name: str
    key: bytes = b""
    bits: int = 0


@dataclass(frozen=True)
class ReplayState:
    """Anti-replay and sequence state (``xfrm_replay_state[_esn]``).

    ``oseq`` / ``seq`` are 64-bit (``oseq_hi << 32 | oseq``); without ESN the
    high halves are 0.  ``esn_attr`` says the kernel keeps the state in an
    ``xfrm_replay_state_esn`` (ESN, or a window wider than 32): then it must
    be installed with XFRMA_REPLAY_ESN_VAL, else with XFRMA_REPLAY_VAL.
    """

    oseq: int = 0
    seq: int = 0
    bitmap: tuple[int, ...] = (0,)
    window: int = 32
    esn_attr: bool = False


@dataclass(frozen=True)
class SecurityAssociation:
    """One XFRM state, with everything needed to install it elsewhere.

    ``flags`` is ``xfrm_usersa_info.flags`` (XFRM_STATE_*), ``extra_flags``
    XFRMA_SA_EXTRA_FLAGS.  Path MTU is not XFRM state (see module doc).
    Where the kernel keeps each field: ``SA_MEMBERS``, ``SA_ATTRIBUTES``.
    """

    daddr: str
    saddr: str
    spi: int
    proto: int = IPPROTO_ESP
    family: int = AF_INET6
    mode: int = XFRM_MODE_TUNNEL
    reqid: int = 0
    algorithms: tuple[Algorithm, ...] = ()
    selector: Selector = field(default_factory=Selector)
    lifetime: LifetimeConfig = field(default_factory=LifetimeConfig)
    current: LifetimeCurrent = field(default_factory=LifetimeCurrent)
    replay: ReplayState = field(default_factory=ReplayState)
    flags: int = 0
    extra_flags: int = 0
    mark: Mark | None = None
    if_id: int = 0


@dataclass(frozen=True)
class SecurityPolicy:
    """One SPD entry (``xfrm_userpolicy_info`` + XFRMA_TMPL).

    Where the kernel keeps each field: ``POLICY_MEMBERS``, ``IF_ID``.
    """

    selector: Selector
    dir: int
    templates: tuple[Template, ...] = ()
    action: int = XFRM_POLICY_ALLOW
    priority: int = 0
    index: int = 0
    flags: int = 0
    share: int = 0
    lifetime: LifetimeConfig = field(default_factory=LifetimeConfig)
    mark: Mark | None = None
    if_id: int = 0


@dataclass(frozen=True)
class SpiChange:
    """The nAR replaced a colliding inbound SPI: tell the MN."""

    old_spi: int
    new_spi: int


# --- where the kernel keeps the SA and policy fields ----------------------------------
#
# ``selector`` / ``lifetime`` / ``current`` are the ``sel`` / ``lft`` /
# ``curlft`` members; algorithms, replay state and templates have attributes
# of their own (xfrm.py).

#: Scalar SecurityAssociation fields kept in ``xfrm_usersa_info``.
SA_MEMBERS = bind(
    xfrm_usersa_info, "saddr", "family", "mode", "reqid", "flags",
    daddr="id.daddr", spi="id.spi", proto="id.proto",
)
#: SecurityAssociation fields kept in attributes of their own, sent when non-zero.
SA_ATTRIBUTES = (attribute(xfrm_usersa_info, "XFRMA_SA_EXTRA_FLAGS", "extra_flags"),)
#: Scalar SecurityPolicy fields kept in ``xfrm_userpolicy_info``.
POLICY_MEMBERS = bind(xfrm_userpolicy_info, "dir", "action", "flags", "share", "priority", "index")
#: ``if_id`` of SAs and policies (XFRMA_IF_ID), sent when non-zero.
IF_ID = attribute(xfrm_usersa_info, "XFRMA_IF_ID", "if_id")


# --- wire layout -------------------------------------------------------------------
#
# Every record is built from the members above: their C types, in network byte
# order.  The selector, lifetimes and template are their structures laid out
# in their values' field order (C alignment, padded to 4); the SA and policy
# records open with a head that lists its fields in wire order.


def _pick(fields: Iterable[Member], *names: str) -> list[Member]:
    by_name = {m.name: m for m in fields}
    return [by_name[name] for name in names]


_SA_FIELDS = (*SA_MEMBERS, *SA_ATTRIBUTES, IF_ID)
_POLICY_FIELDS = (*POLICY_MEMBERS, IF_ID)
_MARK = [replace(m, name=f"mark_{m.name}") for m in Mark.xfrm_members]  # mark_value, mark_mask

_HEADER = Record(
    [("version", "B"), ("flags", "B"), ("sa_count", "B"), ("policy_count", "B"),
     ("captured_at", "Q"), ("reserved", "I")]
)  # 16
_SELECTOR = Record.aligned(Selector.xfrm_members)  # 56
_LIFETIME_CFG = Record.aligned(LifetimeConfig.xfrm_members)  # 64
_LIFETIME_CUR = Record.aligned(LifetimeCurrent.xfrm_members)  # 32
_TEMPLATE = Record.aligned(Template.xfrm_members)  # 60
_SA_HEAD = Record(
    [
        ("length", "H"),
        *_pick(_SA_FIELDS, "family", "proto", "mode", "flags"),
        ("algorithm_count", "B"),
        *_pick(_SA_FIELDS, "spi", "reqid", "extra_flags", "if_id"),
        *_MARK,
        *_pick(_SA_FIELDS, "daddr", "saddr"),
    ]
)  # 64
# The replay part and the algorithms are the context's own (64-bit sequence
# numbers, ESN or not); so is the record flags octet.
_REPLAY = Record(
    [("oseq", "Q"), ("seq", "Q"), ("window", "I"), ("record_flags", "B"), ("reserved", "B"), ("words", "H")]
)  # 24
_ALGORITHM = Record([("kind", "B"), ("name_length", "B"), ("key_length", "H"), ("bits", "I")])  # 8
_POLICY_HEAD = Record(
    [
        ("length", "H"),
        *_pick(_POLICY_FIELDS, "dir", "action", "flags", "share"),
        ("template_count", "B"),
        ("has_mark", "B"),
        *_pick(_POLICY_FIELDS, "priority", "index", "if_id"),
        *_MARK,
    ]
)  # 28
_SPI_CHANGE = struct.Struct(">II")

# The SA record's "record flags" octet (inside its replay part).
_RECORD_FLAG_ESN_ATTR = 0x01
_RECORD_FLAG_HAS_MARK = 0x02


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


def _check_family(family: int, allow_unspec: bool = False) -> None:
    if family not in (AF_INET, AF_INET6) and not (allow_unspec and family == 0):
        raise ContextDecodeError(f"unknown address family {family}")


_XV = TypeVar("_XV", bound=XfrmValue)


def _pack(record: Record, value: XfrmValue) -> bytes:
    return record.pack(raw_fields(value, type(value).xfrm_members))


def _unpack(record: Record, cls: type[_XV], data: bytes, offset: int) -> tuple[_XV, int]:
    """A value without addresses (the lifetimes)."""
    return cls(**record.unpack_from(data, offset)), offset + record.size


def _unpack_family(record: Record, cls: type[_XV], data: bytes, offset: int,
                   allow_unspec: bool) -> tuple[_XV, int]:
    """A value whose addresses follow its own ``family`` (checked first)."""
    raw = record.unpack_from(data, offset)
    _check_family(raw["family"], allow_unspec)
    return cls(**text_fields(cls.xfrm_members, raw, raw["family"])), offset + record.size


def _mark_fields(mark: Mark | None) -> dict[str, int | bytes]:
    """mark_value, mark_mask (0 without a mark)."""
    return {f"mark_{name}": v for name, v in raw_fields(mark or Mark(), Mark.xfrm_members).items()}


def _encode_sa(sa: SecurityAssociation) -> bytes:
    body = bytearray()
    body += _pack(_SELECTOR, sa.selector)
    body += _pack(_LIFETIME_CFG, sa.lifetime)
    body += _pack(_LIFETIME_CUR, sa.current)
    replay = sa.replay
    record_flags = (_RECORD_FLAG_ESN_ATTR if replay.esn_attr else 0) | (
        _RECORD_FLAG_HAS_MARK if sa.mark is not None else 0
    )
    body += _REPLAY.pack(
        {"oseq": replay.oseq, "seq": replay.seq, "window": replay.window,
         "record_flags": record_flags, "reserved": 0, "words": len(replay.bitmap)}
    )
    body += struct.pack(f">{len(replay.bitmap)}I", *replay.bitmap)
    for algorithm in sa.algorithms:
        name = algorithm.name.encode("ascii")
        if len(name) > 63:
            raise ValueError(f"algorithm name too long: {algorithm.name!r}")
        body += _ALGORITHM.pack(
            {"kind": ALGORITHM_KINDS.index(algorithm.kind), "name_length": len(name),
             "key_length": len(algorithm.key), "bits": algorithm.bits}
        )
        tail = name + algorithm.key
        body += tail + b"\0" * _pad4(len(tail))
    head = _SA_HEAD.pack(
        {**raw_fields(sa, _SA_FIELDS), **_mark_fields(sa.mark),
         "length": _SA_HEAD.size + len(body), "algorithm_count": len(sa.algorithms)}
    )
    return head + bytes(body)


def _decode_algorithms(data: bytes, pos: int, count: int, end: int) -> tuple[list[Algorithm], int]:
    algorithms = []
    for _ in range(count):
        head = _ALGORITHM.unpack_from(data, pos)
        pos += _ALGORITHM.size
        kind, name_len = head["kind"], head["name_length"]
        if kind >= len(ALGORITHM_KINDS):
            raise ContextDecodeError(f"unknown algorithm kind {kind}")
        if name_len == 0 or name_len > 63:
            raise ContextDecodeError(f"bad algorithm name length {name_len}")
        tail_len = name_len + head["key_length"]
        if pos + tail_len > end:
            raise ContextDecodeError("algorithm runs past its SA record")
        name = bytes(data[pos : pos + name_len]).decode("ascii")
        if not name.isprintable():
            raise ContextDecodeError("algorithm name is not printable")
        key = bytes(data[pos + name_len : pos + tail_len])
        pos += tail_len + _pad4(tail_len)
        algorithms.append(Algorithm(ALGORITHM_KINDS[kind], name, key, head["bits"]))
    return algorithms, pos


def _decode_sa(data: bytes, offset: int) -> tuple[SecurityAssociation, int]:
    head = _SA_HEAD.unpack_from(data, offset)
    length, family = head["length"], head["family"]
    end = offset + length
    if length < _SA_HEAD.size or end > len(data):
        raise ContextDecodeError(f"SA record length {length} out of bounds")
    _check_family(family)
    pos = offset + _SA_HEAD.size
    selector, pos = _unpack_family(_SELECTOR, Selector, data, pos, allow_unspec=True)
    lifetime, pos = _unpack(_LIFETIME_CFG, LifetimeConfig, data, pos)
    current, pos = _unpack(_LIFETIME_CUR, LifetimeCurrent, data, pos)
    replay = _REPLAY.unpack_from(data, pos)
    pos += _REPLAY.size
    record_flags, words = replay["record_flags"], replay["words"]
    if record_flags & ~(_RECORD_FLAG_ESN_ATTR | _RECORD_FLAG_HAS_MARK):
        raise ContextDecodeError(f"unknown replay flags {record_flags:#x}")
    if words * 32 > XFRMA_REPLAY_ESN_MAX:
        raise ContextDecodeError(f"replay bitmap of {words} words exceeds XFRMA_REPLAY_ESN_MAX")
    bitmap = struct.unpack_from(f">{words}I", data, pos)
    pos += 4 * words
    algorithms, pos = _decode_algorithms(data, pos, head["algorithm_count"], end)
    if pos != end:
        raise ContextDecodeError(f"SA record length {length} does not match its content")
    has_mark = bool(record_flags & _RECORD_FLAG_HAS_MARK)
    if not has_mark and (head["mark_value"] or head["mark_mask"]):
        raise ContextDecodeError("mark values without the mark flag")
    sa = SecurityAssociation(
        **text_fields(_SA_FIELDS, head, family),
        algorithms=tuple(algorithms),
        selector=selector,
        lifetime=lifetime,
        current=current,
        replay=ReplayState(replay["oseq"], replay["seq"], tuple(bitmap), replay["window"],
                           bool(record_flags & _RECORD_FLAG_ESN_ATTR)),
        mark=Mark(head["mark_value"], head["mark_mask"]) if has_mark else None,
    )
    return sa, end


def _encode_policy(policy: SecurityPolicy) -> bytes:
    body = bytearray()
    body += _pack(_SELECTOR, policy.selector)
    body += _pack(_LIFETIME_CFG, policy.lifetime)
    for tmpl in policy.templates:
        body += _pack(_TEMPLATE, tmpl)
    head = _POLICY_HEAD.pack(
        {**raw_fields(policy, _POLICY_FIELDS), **_mark_fields(policy.mark),
         "length": _POLICY_HEAD.size + len(body), "template_count": len(policy.templates),
         "has_mark": 1 if policy.mark is not None else 0}
    )
    return head + bytes(body)


def _decode_policy(data: bytes, offset: int) -> tuple[SecurityPolicy, int]:
    head = _POLICY_HEAD.unpack_from(data, offset)
    length, template_count, has_mark = head["length"], head["template_count"], head["has_mark"]
    end = offset + length
    expected = _POLICY_HEAD.size + _SELECTOR.size + _LIFETIME_CFG.size + template_count * _TEMPLATE.size
    if length != expected or end > len(data):
        raise ContextDecodeError(f"policy record length {length}, expected {expected}")
    if head["dir"] > 2 or head["action"] > 1 or has_mark > 1:
        raise ContextDecodeError("policy direction, action or mark flag out of range")
    if not has_mark and (head["mark_value"] or head["mark_mask"]):
        raise ContextDecodeError("mark values without the mark flag")
    pos = offset + _POLICY_HEAD.size
    selector, pos = _unpack_family(_SELECTOR, Selector, data, pos, allow_unspec=True)
    lifetime, pos = _unpack(_LIFETIME_CFG, LifetimeConfig, data, pos)
    templates = []
    for _ in range(template_count):
        template, pos = _unpack_family(_TEMPLATE, Template, data, pos, allow_unspec=False)
        templates.append(template)
    policy = SecurityPolicy(
        **text_fields(_POLICY_FIELDS, head, AF_INET6),
        selector=selector,
        templates=tuple(templates),
        lifetime=lifetime,
        mark=Mark(head["mark_value"], head["mark_mask"]) if has_mark else None,
    )
    return policy, end


@dataclass(frozen=True)
class IpsecContext:
    """The SAs and policies of one MN at one node, as transferred in a CDB.

    ``captured_at`` is the sender's wall clock (seconds) when the SAs were
    read: the receiver computes how long each SA has lived as
    ``captured_at - current.add_time``, without trusting clocks to agree.
    """

    sas: tuple[SecurityAssociation, ...] = ()
    policies: tuple[SecurityPolicy, ...] = ()
    version: int = IPSEC_CONTEXT_VERSION
    captured_at: int = 0

    def encode(self) -> bytes:
        if self.version != IPSEC_CONTEXT_VERSION:
            raise ValueError(f"cannot encode context version {self.version}")
        if len(self.sas) > 255 or len(self.policies) > 255:
            raise ValueError("at most 255 SAs and 255 policies per context")
        parts = [
            _HEADER.pack(
                {"version": self.version, "flags": 0, "sa_count": len(self.sas),
                 "policy_count": len(self.policies), "captured_at": self.captured_at, "reserved": 0}
            )
        ]
        parts += [_encode_sa(sa) for sa in self.sas]
        parts += [_encode_policy(policy) for policy in self.policies]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> IpsecContext:
        """Parse context data; up to 7 trailing zero octets (CDB padding) are allowed."""
        try:
            return cls._decode(bytes(data))
        except ContextDecodeError:
            raise
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
            raise ContextDecodeError(f"malformed IPsec context: {error}") from error

    @classmethod
    def _decode(cls, data: bytes) -> IpsecContext:
        if len(data) < _HEADER.size:
            raise ContextDecodeError(f"IPsec context too short ({len(data)} octets)")
        header = _HEADER.unpack_from(data)
        if header["version"] != IPSEC_CONTEXT_VERSION:
            raise ContextDecodeError(f"unsupported IPsec context version {header['version']}")
        if header["flags"] or header["reserved"]:
            raise ContextDecodeError("reserved header bits set")
        pos = _HEADER.size
        sas = []
        for _ in range(header["sa_count"]):
            sa, pos = _decode_sa(data, pos)
            sas.append(sa)
        policies = []
        for _ in range(header["policy_count"]):
            policy, pos = _decode_policy(data, pos)
            policies.append(policy)
        trailer = data[pos:]
        if len(trailer) > 7 or trailer.strip(b"\0"):
            raise ContextDecodeError(f"{len(trailer)} unexpected octets after the context")
        return cls(tuple(sas), tuple(policies), header["version"], header["captured_at"])


def encode_spi_changes(changes: Iterable[SpiChange]) -> bytes:
    """SPI changes for the CTAA: 8 octets per change (old SPI, new SPI)."""
    return b"".join(_SPI_CHANGE.pack(c.old_spi, c.new_spi) for c in changes)


def decode_spi_changes(data: bytes) -> tuple[SpiChange, ...]:
    if len(data) % _SPI_CHANGE.size:
        raise ContextDecodeError(f"SPI changes length {len(data)} is not a multiple of 8")
    changes = tuple(SpiChange(*pair) for pair in _SPI_CHANGE.iter_unpack(bytes(data)))
    for change in changes:
        if change.old_spi == 0 or change.new_spi == 0 or change.old_spi == change.new_spi:
            raise ContextDecodeError(f"meaningless SPI change {change}")
    return changes
