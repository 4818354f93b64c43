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

import ipaddress
import struct
from dataclasses import dataclass, field

from .errors import ContextDecodeError
from .xfrm_messages import (
    IPPROTO_ESP,
    XFRM_INF,
    XFRM_MODE_TUNNEL,
    XFRM_POLICY_ALLOW,
)

AF_INET = 2
AF_INET6 = 10

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


# --- addresses ------------------------------------------------------------------


def address_to_bytes(address: str) -> bytes:
    """Text address -> the 16 octets of an ``xfrm_address_t``."""
    parsed = ipaddress.ip_address(address)
    return parsed.packed.ljust(16, b"\0")


def address_from_bytes(raw: bytes, family: int) -> str:
    """The 16 octets of an ``xfrm_address_t`` -> text, per ``family``."""
    if family == AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return ipaddress.IPv6Address(bytes(raw[:16])).compressed


def wildcard_for(family: int) -> str:
    return "0.0.0.0" if family == AF_INET else "::"


# --- values ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """``struct xfrm_selector``: which packets a policy (or SA) applies to."""

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


@dataclass(frozen=True)
class LifetimeConfig:
    """``struct xfrm_lifetime_cfg``; XFRM_INF / 0 seconds mean no limit."""

    soft_byte_limit: int = XFRM_INF
    hard_byte_limit: int = XFRM_INF
    soft_packet_limit: int = XFRM_INF
    hard_packet_limit: int = XFRM_INF
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0


@dataclass(frozen=True)
class LifetimeCurrent:
    """``struct xfrm_lifetime_cur``: what the SA has used so far.

    ``add_time`` / ``use_time`` are the holder's wall-clock seconds; together
    with ``IpsecContext.captured_at`` (same clock) they give ages that do not
    depend on the receiver's clock.
    """

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0


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
class Mark:
    value: int = 0
    mask: int = 0


@dataclass(frozen=True)
class SecurityAssociation:
    """One XFRM state, with everything needed to install it elsewhere.

    ``flags`` is ``xfrm_usersa_info.flags`` (XFRM_STATE_*), ``extra_flags``
    XFRMA_SA_EXTRA_FLAGS.  Path MTU is not XFRM state (see module doc).
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

    @property
    def key(self) -> tuple[str, int, int]:
        """(daddr, SPI, proto): what the kernel keeps unique."""
        return (self.daddr, self.spi, self.proto)


@dataclass(frozen=True)
class Template:
    """``struct xfrm_user_tmpl``: the SA a policy asks for."""

    daddr: str
    saddr: str
    spi: int = 0
    proto: int = IPPROTO_ESP
    family: int = AF_INET6
    reqid: int = 0
    mode: int = XFRM_MODE_TUNNEL
    share: int = 0
    optional: int = 0
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF


@dataclass(frozen=True)
class SecurityPolicy:
    """One SPD entry (``xfrm_userpolicy_info`` + XFRMA_TMPL)."""

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


# --- wire layout -------------------------------------------------------------------

_HEADER = struct.Struct(">BBBBQI")  # version, flags, #SA, #policy, captured_at, reserved
_SELECTOR = struct.Struct(">16s16sHHHHHBBB3xiI")  # 56
_LIFETIME_CFG = struct.Struct(">8Q")  # 64
_LIFETIME_CUR = struct.Struct(">4Q")  # 32
_SA_FIXED = struct.Struct(">HHBBBBIIIIII16s16s")  # 64
_REPLAY_FIXED = struct.Struct(">QQIBBH")  # 24
_ALGORITHM_FIXED = struct.Struct(">BBHI")  # 8
_POLICY_FIXED = struct.Struct(">HBBBBBBIIIII")  # 28
_TEMPLATE = struct.Struct(">16s16sIIIIIHBBBB2x")  # 60
_SPI_CHANGE = struct.Struct(">II")

# The SA record's "record flags" octet (inside its replay part).
_RECORD_FLAG_ESN_ATTR = 0x01
_RECORD_FLAG_HAS_MARK = 0x02


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


def _encode_selector(sel: Selector) -> bytes:
    return _SELECTOR.pack(
        address_to_bytes(sel.daddr),
        address_to_bytes(sel.saddr),
        sel.dport,
        sel.dport_mask,
        sel.sport,
        sel.sport_mask,
        sel.family,
        sel.prefixlen_d,
        sel.prefixlen_s,
        sel.proto,
        sel.ifindex,
        sel.user,
    )


def _decode_selector(data: bytes, offset: int) -> tuple[Selector, int]:
    (daddr, saddr, dport, dmask, sport, smask, family, pld, pls, proto, ifindex, user) = (
        _SELECTOR.unpack_from(data, offset)
    )
    _check_family(family, allow_unspec=True)
    sel = Selector(
        daddr=address_from_bytes(daddr, family),
        saddr=address_from_bytes(saddr, family),
        dport=dport,
        dport_mask=dmask,
        sport=sport,
        sport_mask=smask,
        family=family,
        prefixlen_d=pld,
        prefixlen_s=pls,
        proto=proto,
        ifindex=ifindex,
        user=user,
    )
    return sel, offset + _SELECTOR.size


def _check_family(family: int, allow_unspec: bool = False) -> None:
    if family not in (AF_INET, AF_INET6) and not (allow_unspec and family == 0):
        raise ContextDecodeError(f"unknown address family {family}")


def _lifetime_cfg_tuple(lft: LifetimeConfig) -> tuple[int, ...]:
    return (
        lft.soft_byte_limit,
        lft.hard_byte_limit,
        lft.soft_packet_limit,
        lft.hard_packet_limit,
        lft.soft_add_expires_seconds,
        lft.hard_add_expires_seconds,
        lft.soft_use_expires_seconds,
        lft.hard_use_expires_seconds,
    )


def _encode_sa(sa: SecurityAssociation) -> bytes:
    mark = sa.mark or Mark()
    body = bytearray()
    body += _encode_selector(sa.selector)
    body += _LIFETIME_CFG.pack(*_lifetime_cfg_tuple(sa.lifetime))
    cur = sa.current
    body += _LIFETIME_CUR.pack(cur.bytes, cur.packets, cur.add_time, cur.use_time)
    replay = sa.replay
    replay_flags = (_RECORD_FLAG_ESN_ATTR if replay.esn_attr else 0) | (
        _RECORD_FLAG_HAS_MARK if sa.mark is not None else 0
    )
    body += _REPLAY_FIXED.pack(
        replay.oseq, replay.seq, replay.window, replay_flags, 0, len(replay.bitmap)
    )
    body += struct.pack(f">{len(replay.bitmap)}I", *replay.bitmap)
    for algorithm in sa.algorithms:
        name = algorithm.name.encode("ascii")
        if len(name) > 63:
            raise ValueError(f"algorithm name too long: {algorithm.name!r}")
        body += _ALGORITHM_FIXED.pack(
            ALGORITHM_KINDS.index(algorithm.kind), len(name), len(algorithm.key), algorithm.bits
        )
        tail = name + algorithm.key
        body += tail + b"\0" * _pad4(len(tail))
    fixed = _SA_FIXED.pack(
        _SA_FIXED.size + len(body),
        sa.family,
        sa.proto,
        sa.mode,
        sa.flags,
        len(sa.algorithms),
        sa.spi,
        sa.reqid,
        sa.extra_flags,
        sa.if_id,
        mark.value,
        mark.mask,
        address_to_bytes(sa.daddr),
        address_to_bytes(sa.saddr),
    )
    return fixed + bytes(body)


def _decode_sa(data: bytes, offset: int) -> tuple[SecurityAssociation, int]:
    (
        length,
        family,
        proto,
        mode,
        flags,
        algorithm_count,
        spi,
        reqid,
        extra_flags,
        if_id,
        mark_value,
        mark_mask,
        daddr,
        saddr,
    ) = _SA_FIXED.unpack_from(data, offset)
    end = offset + length
    if length < _SA_FIXED.size or end > len(data):
        raise ContextDecodeError(f"SA record length {length} out of bounds")
    _check_family(family)
    pos = offset + _SA_FIXED.size
    selector, pos = _decode_selector(data, pos)
    lifetime = LifetimeConfig(*_LIFETIME_CFG.unpack_from(data, pos))
    pos += _LIFETIME_CFG.size
    current = LifetimeCurrent(*_LIFETIME_CUR.unpack_from(data, pos))
    pos += _LIFETIME_CUR.size
    oseq, seq, window, replay_flags, _reserved, words = _REPLAY_FIXED.unpack_from(data, pos)
    pos += _REPLAY_FIXED.size
    if replay_flags & ~(_RECORD_FLAG_ESN_ATTR | _RECORD_FLAG_HAS_MARK):
        raise ContextDecodeError(f"unknown replay flags {replay_flags:#x}")
    if words * 32 > 4096:
        raise ContextDecodeError(f"replay bitmap of {words} words exceeds XFRMA_REPLAY_ESN_MAX")
    bitmap = struct.unpack_from(f">{words}I", data, pos)
    pos += 4 * words
    algorithms = []
    for _ in range(algorithm_count):
        kind, name_len, key_len, bits = _ALGORITHM_FIXED.unpack_from(data, pos)
        pos += _ALGORITHM_FIXED.size
        if kind >= len(ALGORITHM_KINDS):
            raise ContextDecodeError(f"unknown algorithm kind {kind}")
        if name_len == 0 or name_len > 63:
            raise ContextDecodeError(f"bad algorithm name length {name_len}")
        tail_len = name_len + key_len
        if pos + tail_len > end:
            raise ContextDecodeError("algorithm runs past its SA record")
        name = bytes(data[pos : pos + name_len]).decode("ascii")
        if not name.isprintable():
            raise ContextDecodeError("algorithm name is not printable")
        key = bytes(data[pos + name_len : pos + tail_len])
        pos += tail_len + _pad4(tail_len)
        algorithms.append(Algorithm(ALGORITHM_KINDS[kind], name, key, bits))
    if pos != end:
        raise ContextDecodeError(f"SA record length {length} does not match its content")
    sa = SecurityAssociation(
        daddr=address_from_bytes(daddr, family),
        saddr=address_from_bytes(saddr, family),
        spi=spi,
        proto=proto,
        family=family,
        mode=mode,
        reqid=reqid,
        algorithms=tuple(algorithms),
        selector=selector,
        lifetime=lifetime,
        current=current,
        replay=ReplayState(oseq, seq, tuple(bitmap), window, bool(replay_flags & 1)),
        flags=flags,
        extra_flags=extra_flags,
        mark=Mark(mark_value, mark_mask) if replay_flags & (_RECORD_FLAG_HAS_MARK) else None,
        if_id=if_id,
    )
    if sa.mark is None and (mark_value or mark_mask):
        raise ContextDecodeError("mark values without the mark flag")
    return sa, end


def _encode_policy(policy: SecurityPolicy) -> bytes:
    mark = policy.mark or Mark()
    body = bytearray()
    body += _encode_selector(policy.selector)
    body += _LIFETIME_CFG.pack(*_lifetime_cfg_tuple(policy.lifetime))
    for tmpl in policy.templates:
        body += _TEMPLATE.pack(
            address_to_bytes(tmpl.daddr),
            address_to_bytes(tmpl.saddr),
            tmpl.spi,
            tmpl.reqid,
            tmpl.aalgos,
            tmpl.ealgos,
            tmpl.calgos,
            tmpl.family,
            tmpl.proto,
            tmpl.mode,
            tmpl.share,
            tmpl.optional,
        )
    fixed = _POLICY_FIXED.pack(
        _POLICY_FIXED.size + len(body),
        policy.dir,
        policy.action,
        policy.flags,
        policy.share,
        len(policy.templates),
        1 if policy.mark is not None else 0,
        policy.priority,
        policy.index,
        policy.if_id,
        mark.value,
        mark.mask,
    )
    return fixed + bytes(body)


def _decode_policy(data: bytes, offset: int) -> tuple[SecurityPolicy, int]:
    (
        length,
        direction,
        action,
        flags,
        share,
        template_count,
        has_mark,
        priority,
        index,
        if_id,
        mark_value,
        mark_mask,
    ) = _POLICY_FIXED.unpack_from(data, offset)
    end = offset + length
    expected = _POLICY_FIXED.size + _SELECTOR.size + _LIFETIME_CFG.size
    expected += template_count * _TEMPLATE.size
    if length != expected or end > len(data):
        raise ContextDecodeError(f"policy record length {length}, expected {expected}")
    if direction > 2 or action > 1 or has_mark > 1:
        raise ContextDecodeError("policy direction, action or mark flag out of range")
    if not has_mark and (mark_value or mark_mask):
        raise ContextDecodeError("mark values without the mark flag")
    pos = offset + _POLICY_FIXED.size
    selector, pos = _decode_selector(data, pos)
    lifetime = LifetimeConfig(*_LIFETIME_CFG.unpack_from(data, pos))
    pos += _LIFETIME_CFG.size
    templates = []
    for _ in range(template_count):
        (daddr, saddr, spi, reqid, aalgos, ealgos, calgos, family, proto, mode, tshare, optional) = (
            _TEMPLATE.unpack_from(data, pos)
        )
        pos += _TEMPLATE.size
        _check_family(family)
        templates.append(
            Template(
                daddr=address_from_bytes(daddr, family),
                saddr=address_from_bytes(saddr, family),
                spi=spi,
                proto=proto,
                family=family,
                reqid=reqid,
                mode=mode,
                share=tshare,
                optional=optional,
                aalgos=aalgos,
                ealgos=ealgos,
                calgos=calgos,
            )
        )
    policy = SecurityPolicy(
        selector=selector,
        dir=direction,
        templates=tuple(templates),
        action=action,
        priority=priority,
        index=index,
        flags=flags,
        share=share,
        lifetime=lifetime,
        mark=Mark(mark_value, mark_mask) if has_mark else None,
        if_id=if_id,
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
            _HEADER.pack(self.version, 0, len(self.sas), len(self.policies), self.captured_at, 0)
        ]
        parts += [_encode_sa(sa) for sa in self.sas]
        parts += [_encode_policy(policy) for policy in self.policies]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "IpsecContext":
        """Parse context data; up to 7 trailing zero octets (CDB padding) are allowed."""
        try:
            return cls._decode(bytes(data))
        except ContextDecodeError:
            raise
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
            raise ContextDecodeError(f"malformed IPsec context: {error}") from error

    @classmethod
    def _decode(cls, data: bytes) -> "IpsecContext":
        if len(data) < _HEADER.size:
            raise ContextDecodeError(f"IPsec context too short ({len(data)} octets)")
        version, flags, sa_count, policy_count, captured_at, reserved = _HEADER.unpack_from(data)
        if version != IPSEC_CONTEXT_VERSION:
            raise ContextDecodeError(f"unsupported IPsec context version {version}")
        if flags or reserved:
            raise ContextDecodeError("reserved header bits set")
        pos = _HEADER.size
        sas = []
        for _ in range(sa_count):
            sa, pos = _decode_sa(data, pos)
            sas.append(sa)
        policies = []
        for _ in range(policy_count):
            policy, pos = _decode_policy(data, pos)
            policies.append(policy)
        trailer = data[pos:]
        if len(trailer) > 7 or trailer.strip(b"\0"):
            raise ContextDecodeError(f"{len(trailer)} unexpected octets after the context")
        return cls(tuple(sas), tuple(policies), version, captured_at)


def encode_spi_changes(changes) -> bytes:
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
