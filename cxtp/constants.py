"""Wire constants of RFC 4067 / RFC 4065, with their RFC-exact names."""

from __future__ import annotations

from enum import IntEnum

#: RFC 4067 §2.2: the only version defined.
CXTP_VERSION = 1

#: RFC 4065 §3/§4, RFC 4067 §3.2: ICMP "Experimental Mobility" types.
ICMPV6_TYPE_EXPERIMENTAL_MOBILITY = 150
ICMPV4_TYPE_EXPERIMENTAL_MOBILITY = 41
#: RFC 4067 §3.2: ICMP code for CXTP.
ICMP_CODE_CXTP = 0
#: RFC 4065 §8: Experimental Mobility subtypes (0 = CARD, 1 = CXTP).
ICMP_SUBTYPE_CARD = 0
ICMP_SUBTYPE_CXTP = 1
#: RFC 4067 §3.2: hop limit / TTL of MN-AR messages.
CXTP_HOP_LIMIT = 255

#: RFC 4065 §2: SCTP port of CXTP (5090 belongs to CARD).
CXTP_SCTP_PORT = 5091
#: RFC 4067 §3.1 asks for PPID 'CXTP' but no number was ever allocated [INFERENCE]: 0 = unspecified.
CXTP_SCTP_PPID = 0

#: RFC 4067 §2.5.3, IANA "CXTP Authorization Token Calculation Algorithms".
HMAC_SHA1 = 0x1
#: RFC 4067 §2.5.1: token = First(32, HMAC_SHA1(...)).
TOKEN_LENGTH = 4

#: IANA Context Transfer Profile Types (RFC 4065 §6, RFC 4067 App. B).
FPT_RESERVED = 0x00
FPT_IPV6_MULTICAST_LISTENER = 0x01
#: Local [INFERENCE]: the FPTs of our options (cxtp/options.py, docs/protocol.md "Departures from
#: RFC 4067"): binding, transfer, bound, CTAA key, CTAA authenticator.
OPTION_FPTS = frozenset(range(0xFF01, 0xFF06))


class MessageType(IntEnum):
    """RFC 4067 §2.2 / §2.5: 5-bit Type codes."""

    CTAR = 0x1
    CTAA = 0x2
    CTD = 0x3
    PCTD = 0x4
    CTDR = 0x5
    CTC = 0x6
    CT_REQ = 0x7


# --- status codes -------------------------------------------------------------------------------
#: RFC 4067 §2.5.4: 0 means success.
STATUS_SUCCESS = 0x00
#: RFC 4067 §3.1, §4: the only CXTP-level status the RFC defines.
BAD_CHECKSUM = 0x01
# RFC 4067 defines no other numbers (§2.3 leaves them to context types). The codes below are
# local choices [INFERENCE], taken from the top half of the octet to stay clear of context types.
#: No handler for this FPT on the router (RFC 3374 §5.1 refusal).
STATUS_UNSUPPORTED_FPT = 0x80
#: The pAR has no context of this type for the MN.
STATUS_CONTEXT_UNAVAILABLE = 0x81
#: The Authorization Token did not verify (§2.5.1, §6.3 define no code for it).
STATUS_AUTHORIZATION_FAILED = 0x82
#: The transfer did not finish within CT_MAX_TRANSFER_TIME.
STATUS_TRANSFER_TIMEOUT = 0x83
#: The context's data does not fit in one CDB (255 * 8 octets).
STATUS_CONTEXT_TOO_LARGE = 0x84
#: The handler raised an exception while installing or activating.
STATUS_HANDLER_ERROR = 0x85
#: Unknown token algorithm in a PCTD: the nAR refuses the context (no CTAR could ever verify).
STATUS_UNSUPPORTED_ALGORITHM = 0x86

#: Names of the CXTP-level codes, for reasons and logs; 0x01-0x7F belong to the context types.
STATUS_NAMES = {
    STATUS_SUCCESS: "success",
    BAD_CHECKSUM: "bad checksum or context-specific",
    STATUS_UNSUPPORTED_FPT: "unsupported context type",
    STATUS_CONTEXT_UNAVAILABLE: "context unavailable",
    STATUS_AUTHORIZATION_FAILED: "authorization failed",
    STATUS_TRANSFER_TIMEOUT: "transfer timeout",
    STATUS_CONTEXT_TOO_LARGE: "context too large",
    STATUS_HANDLER_ERROR: "handler error",
    STATUS_UNSUPPORTED_ALGORITHM: "unsupported token algorithm",
}


def status_name(status: int) -> str:
    """``0x83 (transfer timeout)``; codes of context types are named as such."""
    name = STATUS_NAMES.get(status)
    if name is None:
        name = "context-specific" if status < 0x80 else "unknown"
    return f"{status:#04x} ({name})"


# --- timers and limits (RFC 4067 §4); defaults of :class:`cxtp.config.Config` -----------------
CT_REQUEST_RATE = 10  # CTARs per second
CT_MAX_TRANSFER_TIME = 0.200  # seconds
CT_REQUEST_RETRY = 2.0  # seconds
CT_RETRY_MAX = 15.0  # seconds
#: §3.2: sequence numbers must not repeat, and ARs filter (seq, MN) pairs, for 7 seconds.
CT_SEQUENCE_REUSE_TIME = 7.0
#: §2.5.3 names CT_MAX_HANDOVER_TIME but gives no value [NOT FOUND]; local default [INFERENCE].
CT_MAX_HANDOVER_TIME = 5.0

#: §2.4: CDB Length is 8 bits of 8-octet words.
CDB_WORD = 8
CDB_MAX_LENGTH_WORDS = 255
CDB_MAX_OCTETS = CDB_MAX_LENGTH_WORDS * CDB_WORD
#: Our extension: the Reserved octet of a status tuple counts 4-octet words of data.
STATUS_DATA_WORD = 4
STATUS_MAX_DATA_OCTETS = 255 * STATUS_DATA_WORD
