"""Linux XFRM netlink structures, declared on pyroute2's netlink framework.

pyroute2 0.9.7 has no XFRM SA/policy messages, so they are declared here with
the names of ``include/uapi/linux/xfrm.h``.  Every structure is a pyroute2
``nla`` (usable as an attribute payload) or ``nlmsg`` (usable as a message
body) *and* an embeddable field type (``decode_from`` / ``encode_into``,
the hook pyroute2's generic field codec calls for a ``type`` in ``fields``),
so nested C structures are written as nested classes, as in the header.

C padding is explicit (``__padN`` fields with ``x`` formats): the layouts are
checked against the kernel's ``sizeof`` values in ``tests/test_ipsec_xfrm_layout.py``
(x86_64: xfrm_selector 56, xfrm_usersa_info 224, xfrm_userpolicy_info 168,
xfrm_user_tmpl 64).  Unprefixed formats are host byte order (``__u32``);
``>`` formats are the header's ``__be16`` / ``__be32``.

These declarations are the only place a member is spelled: the values of
``context.py``, their netlink dicts and the IPsec context's records are
derived from them (``layout.py``).
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from pyroute2.netlink import nla, nlmsg

# --- numbers from include/uapi/linux/xfrm.h ----------------------------------

NETLINK_XFRM = 6

XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
XFRM_MSG_NEWAE = 0x1E
XFRM_MSG_GETAE = 0x1F
XFRM_MSG_REPORT = 0x20
XFRM_MSG_MIGRATE = 0x21

XFRM_MSG_NAMES = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("XFRM_MSG_")
}

XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_POLICY_TYPE_MAIN = 0

XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1
XFRM_MODE_ROUTEOPTIMIZATION = 2
XFRM_MODE_IN_TRIGGER = 3
XFRM_MODE_BEET = 4

XFRM_SHARE_ANY = 0

XFRM_STATE_NOECN = 1
XFRM_STATE_DECAP_DSCP = 2
XFRM_STATE_NOPMTUDISC = 4
XFRM_STATE_WILDRECV = 8
XFRM_STATE_ICMP = 16
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ALIGN4 = 64
XFRM_STATE_ESN = 128

XFRM_SA_XFLAG_DONT_ENCAP_DSCP = 1
XFRM_SA_XFLAG_OSEQ_MAY_WRAP = 2

XFRM_AE_UNSPEC = 0
XFRM_AE_RTHR = 1
XFRM_AE_RVAL = 2
XFRM_AE_LVAL = 4
XFRM_AE_ETHR = 8

XFRM_INF = 0xFFFFFFFFFFFFFFFF
XFRMA_REPLAY_ESN_MAX = 4096

IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_COMP = 108

# enum xfrm_attr_type_t
XFRMA_UNSPEC = 0
XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_ALG_COMP = 3
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_SA = 6
XFRMA_POLICY = 7
XFRMA_SEC_CTX = 8
XFRMA_LTIME_VAL = 9
XFRMA_REPLAY_VAL = 10
XFRMA_REPLAY_THRESH = 11
XFRMA_ETIMER_THRESH = 12
XFRMA_SRCADDR = 13
XFRMA_COADDR = 14
XFRMA_LASTUSED = 15
XFRMA_POLICY_TYPE = 16
XFRMA_MIGRATE = 17
XFRMA_ALG_AEAD = 18
XFRMA_KMADDRESS = 19
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_MARK = 21
XFRMA_TFCPAD = 22
XFRMA_REPLAY_ESN_VAL = 23
XFRMA_SA_EXTRA_FLAGS = 24
XFRMA_PROTO = 25
XFRMA_ADDRESS_FILTER = 26
XFRMA_PAD = 27
XFRMA_OFFLOAD_DEV = 28
XFRMA_SET_MARK = 29
XFRMA_SET_MARK_MASK = 30
XFRMA_IF_ID = 31
XFRMA_MTIMER_THRESH = 32
XFRMA_SA_DIR = 33


# --- embeddable C structures -------------------------------------------------


def is_padding(name: str) -> bool:
    """Whether a declared member is explicit C padding (``__padN``)."""
    return name.startswith("__pad")


class _embeddable:
    """Lets a declared structure appear as a field of another structure.

    pyroute2's generic field codec calls ``decode_from(data, offset)`` and
    ``encode_into(data, offset, value)`` for a field whose format is a class.
    A value is a plain dict keyed by the C member names (padding omitted).
    """

    __slots__ = ()
    fields: tuple[tuple[str, str | type[_embeddable]], ...] = ()
    _compiled: ClassVar[tuple[_Compiled, ...]]  # set per class by _members()
    _c_size: ClassVar[int]  # set per class by c_sizeof()

    @classmethod
    def _members(cls) -> tuple[_Compiled, ...]:
        """``fields`` compiled once per class: (name, nested class or ``struct.Struct``, padding,
        zero value). Encoding a context's requests walks these tens of times per message."""
        compiled = cls.__dict__.get("_compiled")
        if compiled is None:
            compiled = tuple(
                (name, fmt, False, None) if isinstance(fmt, type)
                else (name, struct.Struct(fmt), is_padding(name), _zero(fmt))
                for name, fmt in cls.fields)
            cls._compiled = compiled
        return compiled

    @classmethod
    def c_sizeof(cls) -> int:
        size = cls.__dict__.get("_c_size")
        if size is None:
            size = sum(fmt.c_sizeof() if isinstance(fmt, type) else fmt.size for _n, fmt, _p, _z in cls._members())
            cls._c_size = size
        return size

    @classmethod
    def decode_from(cls, data: bytes | bytearray, offset: int = 0) -> tuple[dict[str, Any] | bytes, int]:
        value: dict[str, Any] = {}
        for name, fmt, padding, _zero_value in cls._members():
            if isinstance(fmt, type):
                value[name], offset = fmt.decode_from(data, offset)
                continue
            if not padding:
                unpacked = fmt.unpack_from(data, offset)
                value[name] = unpacked[0] if len(unpacked) == 1 else unpacked
            offset += fmt.size
        return value, offset

    @classmethod
    def encode_into(cls, data: bytearray, offset: int, value: Any) -> int:
        """``value``: a dict for a structure (missing members are zero), bytes for an address."""
        value = value or {}
        end = offset + cls.c_sizeof()
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        for name, fmt, padding, zero in cls._members():
            if isinstance(fmt, type):
                offset = fmt.encode_into(data, offset, value.get(name))
                continue
            if not padding:
                fmt.pack_into(data, offset, value.get(name) or zero)
            offset += fmt.size
        return offset


def _zero(fmt: str) -> bytes | int:
    return b"" if fmt.endswith("s") else 0


#: one compiled member of ``_embeddable.fields``: (name, nested class or ``struct.Struct``,
#: padding, zero value)
_Compiled = tuple[str, "type[_embeddable] | struct.Struct", bool, "bytes | int | None"]


class xfrm_address_t(_embeddable):
    """``typedef union { __be32 a4; __be32 a6[4]; struct in6_addr in6; }``."""

    fields = (("a6", "16s"),)

    @classmethod
    def decode_from(cls, data: bytes | bytearray, offset: int = 0) -> tuple[bytes, int]:
        return bytes(data[offset : offset + 16]), offset + 16

    @classmethod
    def encode_into(cls, data: bytearray, offset: int, value: bytes | None) -> int:
        raw = (value or b"").ljust(16, b"\0")
        if len(data) < offset + 16:
            data.extend(b"\0" * (offset + 16 - len(data)))
        data[offset : offset + 16] = raw
        return offset + 16


class xfrm_selector(nla, _embeddable):
    fields = (
        ("daddr", xfrm_address_t),
        ("saddr", xfrm_address_t),
        ("dport", ">H"),
        ("dport_mask", ">H"),
        ("sport", ">H"),
        ("sport_mask", ">H"),
        ("family", "H"),
        ("prefixlen_d", "B"),
        ("prefixlen_s", "B"),
        ("proto", "B"),
        ("__pad0", "3x"),
        ("ifindex", "i"),
        ("user", "I"),
    )


class xfrm_id(nla, _embeddable):
    fields = (
        ("daddr", xfrm_address_t),
        ("spi", ">I"),
        ("proto", "B"),
        ("__pad0", "3x"),
    )


class xfrm_lifetime_cfg(nla, _embeddable):
    fields = (
        ("soft_byte_limit", "Q"),
        ("hard_byte_limit", "Q"),
        ("soft_packet_limit", "Q"),
        ("hard_packet_limit", "Q"),
        ("soft_add_expires_seconds", "Q"),
        ("hard_add_expires_seconds", "Q"),
        ("soft_use_expires_seconds", "Q"),
        ("hard_use_expires_seconds", "Q"),
    )


class xfrm_lifetime_cur(nla, _embeddable):
    fields = (
        ("bytes", "Q"),
        ("packets", "Q"),
        ("add_time", "Q"),
        ("use_time", "Q"),
    )


class xfrm_stats(nla, _embeddable):
    fields = (
        ("replay_window", "I"),
        ("replay", "I"),
        ("integrity_failed", "I"),
    )


class xfrm_replay_state(nla, _embeddable):
    fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))


class xfrm_mark(nla, _embeddable):
    fields = (("v", "I"), ("m", "I"))


class xfrm_userpolicy_type(nla, _embeddable):
    fields = (
        ("type", "B"),
        ("__pad0", "x"),
        ("reserved1", "H"),
        ("reserved2", "B"),
        ("__pad1", "3x"),
    )


class xfrm_address_filter(nla, _embeddable):
    fields = (
        ("saddr", xfrm_address_t),
        ("daddr", xfrm_address_t),
        ("family", "H"),
        ("splen", "B"),
        ("dplen", "B"),
    )


class xfrm_user_kmaddress(nla, _embeddable):
    fields = (
        ("local", xfrm_address_t),
        ("remote", xfrm_address_t),
        ("reserved", "I"),
        ("family", "H"),
        ("__pad0", "2x"),
    )


class xfrm_encap_tmpl(nla, _embeddable):
    fields = (
        ("encap_type", "H"),
        ("encap_sport", ">H"),
        ("encap_dport", ">H"),
        ("__pad0", "2x"),
        ("encap_oa", xfrm_address_t),
    )


class xfrm_user_tmpl(nla, _embeddable):
    fields = (
        ("id", xfrm_id),
        ("family", "H"),
        ("__pad0", "2x"),
        ("saddr", xfrm_address_t),
        ("reqid", "I"),
        ("mode", "B"),
        ("share", "B"),
        ("optional", "B"),
        ("__pad1", "x"),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
    )


class xfrm_user_migrate(nla, _embeddable):
    fields = (
        ("old_daddr", xfrm_address_t),
        ("old_saddr", xfrm_address_t),
        ("new_daddr", xfrm_address_t),
        ("new_saddr", xfrm_address_t),
        ("proto", "B"),
        ("mode", "B"),
        ("reserved", "H"),
        ("reqid", "I"),
        ("old_family", "H"),
        ("new_family", "H"),
    )


class xfrm_usersa_id(nla, _embeddable):
    fields = (
        ("daddr", xfrm_address_t),
        ("spi", ">I"),
        ("family", "H"),
        ("proto", "B"),
        ("__pad0", "x"),
    )


# --- attributes with a variable tail -------------------------------------------


class _fixed_head_with_tail(nla):
    """An attribute made of a fixed C head and a trailing byte string.

    ``fields`` ends with ``(tail_name, 's')``; pyroute2 encodes a bytes value
    of any length there, and ``ft_decode`` below gives the tail the rest of
    the attribute's payload.
    """

    __slots__ = ()

    def ft_decode(self, offset: int) -> None:
        head = self.fields[:-1]
        for name, fmt in head:
            unpacked = struct.unpack_from(fmt, self.data, offset)
            if not is_padding(name):
                self[name] = unpacked[0] if len(unpacked) == 1 else unpacked
            offset += struct.calcsize(fmt)
        end = self.offset + self.length
        self[self.fields[-1][0]] = bytes(self.data[offset:end])
        del self["attrs"]
        if self.get("value") is not None and not isinstance(self["value"], (bytes, int)):
            del self["value"]


class xfrm_algo(_fixed_head_with_tail):
    fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_key", "s"))


class xfrm_algo_auth(_fixed_head_with_tail):
    fields = (
        ("alg_name", "64s"),
        ("alg_key_len", "I"),
        ("alg_trunc_len", "I"),
        ("alg_key", "s"),
    )


class xfrm_algo_aead(_fixed_head_with_tail):
    fields = (
        ("alg_name", "64s"),
        ("alg_key_len", "I"),
        ("alg_icv_len", "I"),
        ("alg_key", "s"),
    )


class xfrm_replay_state_esn(_fixed_head_with_tail):
    """``bmp`` is the raw ``__u32 bmp[bmp_len]`` array, host byte order."""

    fields = (
        ("bmp_len", "I"),
        ("oseq", "I"),
        ("seq", "I"),
        ("oseq_hi", "I"),
        ("seq_hi", "I"),
        ("replay_window", "I"),
        ("bmp", "s"),
    )


class _struct_array(nla):
    """An attribute holding N contiguous C structures and no inner headers
    (XFRMA_TMPL: ``struct xfrm_user_tmpl[]``, XFRMA_MIGRATE:
    ``struct xfrm_user_migrate[]``).  The value is a list of dicts."""

    __slots__ = ()
    element: ClassVar[type[_embeddable]] = xfrm_user_tmpl
    fields = (("value", "s"),)

    def ft_decode(self, offset: int) -> None:
        end = self.offset + self.length
        size = self.element.c_sizeof()
        items = []
        while offset + size <= end:
            item, offset = self.element.decode_from(self.data, offset)
            items.append(item)
        self["value"] = items
        del self["attrs"]

    def getvalue(self) -> Any:
        return self["value"]

    def ft_encode(self, offset: int) -> tuple[int, int]:
        raw = bytearray()
        for item in self["value"] or ():
            self.element.encode_into(raw, len(raw), item)
        self.data.extend(raw)
        return offset + len(raw), 0


class xfrma_tmpl(_struct_array):
    element = xfrm_user_tmpl


class xfrma_migrate(_struct_array):
    element = xfrm_user_migrate


class xfrma_address(nla):
    fields = (("value", "16s"),)


# --- message bodies --------------------------------------------------------------


class _xfrm_attributes:
    """The attribute map shared by all XFRM message bodies."""

    __slots__ = ()
    prefix = "XFRMA_"
    nla_map = (
        (XFRMA_UNSPEC, "XFRMA_UNSPEC", "none"),
        (XFRMA_ALG_AUTH, "XFRMA_ALG_AUTH", "xfrm_algo"),
        (XFRMA_ALG_CRYPT, "XFRMA_ALG_CRYPT", "xfrm_algo"),
        (XFRMA_ALG_COMP, "XFRMA_ALG_COMP", "xfrm_algo"),
        (XFRMA_ENCAP, "XFRMA_ENCAP", "xfrm_encap_tmpl"),
        (XFRMA_TMPL, "XFRMA_TMPL", "xfrma_tmpl"),
        (XFRMA_SA, "XFRMA_SA", "hex"),
        (XFRMA_POLICY, "XFRMA_POLICY", "hex"),
        (XFRMA_SEC_CTX, "XFRMA_SEC_CTX", "hex"),
        (XFRMA_LTIME_VAL, "XFRMA_LTIME_VAL", "xfrm_lifetime_cur"),
        (XFRMA_REPLAY_VAL, "XFRMA_REPLAY_VAL", "xfrm_replay_state"),
        (XFRMA_REPLAY_THRESH, "XFRMA_REPLAY_THRESH", "uint32"),
        (XFRMA_ETIMER_THRESH, "XFRMA_ETIMER_THRESH", "uint32"),
        (XFRMA_SRCADDR, "XFRMA_SRCADDR", "xfrma_address"),
        (XFRMA_COADDR, "XFRMA_COADDR", "xfrma_address"),
        (XFRMA_LASTUSED, "XFRMA_LASTUSED", "uint64"),
        (XFRMA_POLICY_TYPE, "XFRMA_POLICY_TYPE", "xfrm_userpolicy_type"),
        (XFRMA_MIGRATE, "XFRMA_MIGRATE", "xfrma_migrate"),
        (XFRMA_ALG_AEAD, "XFRMA_ALG_AEAD", "xfrm_algo_aead"),
        (XFRMA_KMADDRESS, "XFRMA_KMADDRESS", "xfrm_user_kmaddress"),
        (XFRMA_ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "xfrm_algo_auth"),
        (XFRMA_MARK, "XFRMA_MARK", "xfrm_mark"),
        (XFRMA_TFCPAD, "XFRMA_TFCPAD", "uint32"),
        (XFRMA_REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "xfrm_replay_state_esn"),
        (XFRMA_SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (XFRMA_PROTO, "XFRMA_PROTO", "uint8"),
        (XFRMA_ADDRESS_FILTER, "XFRMA_ADDRESS_FILTER", "xfrm_address_filter"),
        (XFRMA_PAD, "XFRMA_PAD", "hex"),
        (XFRMA_OFFLOAD_DEV, "XFRMA_OFFLOAD_DEV", "hex"),
        (XFRMA_SET_MARK, "XFRMA_SET_MARK", "uint32"),
        (XFRMA_SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "uint32"),
        (XFRMA_IF_ID, "XFRMA_IF_ID", "uint32"),
        (XFRMA_MTIMER_THRESH, "XFRMA_MTIMER_THRESH", "uint32"),
        (XFRMA_SA_DIR, "XFRMA_SA_DIR", "uint8"),
    )
    xfrm_algo = xfrm_algo
    xfrm_algo_auth = xfrm_algo_auth
    xfrm_algo_aead = xfrm_algo_aead
    xfrm_encap_tmpl = xfrm_encap_tmpl
    xfrma_tmpl = xfrma_tmpl
    xfrm_lifetime_cur = xfrm_lifetime_cur
    xfrm_replay_state = xfrm_replay_state
    xfrma_address = xfrma_address
    xfrm_userpolicy_type = xfrm_userpolicy_type
    xfrma_migrate = xfrma_migrate
    xfrm_user_kmaddress = xfrm_user_kmaddress
    xfrm_mark = xfrm_mark
    xfrm_replay_state_esn = xfrm_replay_state_esn
    xfrm_address_filter = xfrm_address_filter


class _xfrm_body(_xfrm_attributes, nlmsg, _embeddable):
    __slots__ = ()


class xfrm_usersa_info(_xfrm_body):
    fields = (
        ("sel", xfrm_selector),
        ("id", xfrm_id),
        ("saddr", xfrm_address_t),
        ("lft", xfrm_lifetime_cfg),
        ("curlft", xfrm_lifetime_cur),
        ("stats", xfrm_stats),
        ("seq", "I"),
        ("reqid", "I"),
        ("family", "H"),
        ("mode", "B"),
        ("replay_window", "B"),
        ("flags", "B"),
        ("__pad0", "7x"),
    )


class xfrm_usersa_id_msg(_xfrm_body):
    """``struct xfrm_usersa_id`` as a message body (GETSA, DELSA)."""

    fields = xfrm_usersa_id.fields


class xfrm_aevent_id(_xfrm_body):
    fields = (
        ("sa_id", xfrm_usersa_id),
        ("saddr", xfrm_address_t),
        ("flags", "I"),
        ("reqid", "I"),
    )


class xfrm_userspi_info(_xfrm_body):
    fields = (
        ("info", xfrm_usersa_info),
        ("min", "I"),
        ("max", "I"),
    )


class xfrm_userpolicy_info(_xfrm_body):
    fields = (
        ("sel", xfrm_selector),
        ("lft", xfrm_lifetime_cfg),
        ("curlft", xfrm_lifetime_cur),
        ("priority", "I"),
        ("index", "I"),
        ("dir", "B"),
        ("action", "B"),
        ("flags", "B"),
        ("share", "B"),
        ("__pad0", "4x"),
    )


class xfrm_userpolicy_id(_xfrm_body):
    fields = (
        ("sel", xfrm_selector),
        ("index", "I"),
        ("dir", "B"),
        ("__pad0", "3x"),
    )


class xfrm_usersa_flush(_xfrm_body):
    fields = (("proto", "B"), ("__pad0", "3x"))


class xfrm_userpolicy_flush(_xfrm_body):
    """FLUSHPOLICY has no body of its own; only XFRMA_POLICY_TYPE."""

    fields = ()


# Which body each message type carries (requests and replies).
XFRM_BODY_BY_TYPE = {
    XFRM_MSG_NEWSA: xfrm_usersa_info,
    XFRM_MSG_UPDSA: xfrm_usersa_info,
    XFRM_MSG_DELSA: xfrm_usersa_id_msg,
    XFRM_MSG_GETSA: xfrm_usersa_id_msg,
    XFRM_MSG_ALLOCSPI: xfrm_userspi_info,
    XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
    XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
    XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
    XFRM_MSG_GETPOLICY: xfrm_userpolicy_id,
    XFRM_MSG_NEWAE: xfrm_aevent_id,
    XFRM_MSG_GETAE: xfrm_aevent_id,
    XFRM_MSG_MIGRATE: xfrm_userpolicy_id,
    XFRM_MSG_FLUSHSA: xfrm_usersa_flush,
    XFRM_MSG_FLUSHPOLICY: xfrm_userpolicy_flush,
}
