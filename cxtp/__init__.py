"""RFC 4067 Context Transfer Protocol (CXTP): an I/O-free, context-type-generic core.

``decode(bytes)`` gives an immutable message, ``message.encode()`` gives bytes, every malformed
input raises :class:`DecodeError`. ``MobileNode`` and ``AccessRouter`` are sans-I/O role engines;
context types plug in through :class:`Registry`. See docs/protocol.md.
"""

from .config import Config
from .constants import (
    BAD_CHECKSUM,
    CT_MAX_HANDOVER_TIME,
    CT_MAX_TRANSFER_TIME,
    CT_REQUEST_RATE,
    CT_REQUEST_RETRY,
    CT_RETRY_MAX,
    CXTP_HOP_LIMIT,
    CXTP_SCTP_PORT,
    CXTP_SCTP_PPID,
    CXTP_VERSION,
    HMAC_SHA1,
    ICMP_SUBTYPE_CXTP,
    ICMPV4_TYPE_EXPERIMENTAL_MOBILITY,
    ICMPV6_TYPE_EXPERIMENTAL_MOBILITY,
    STATUS_SUCCESS,
    MessageType,
)
from .engine import TRANSPORT_AR, TRANSPORT_ICMP, AccessRouter, Datagram, MobileNode
from .errors import ConfigError, CxtpError, DecodeError, IllegalTransition, ProtocolError
from .events import (
    BindingRejected,
    Cancelled,
    ContextActivated,
    ContextInstalled,
    CtaaReceived,
    CtaaRejected,
    CtReqLimited,
    DecodeFailed,
    DuplicateIgnored,
    MessageDropped,
    RateLimited,
    ReleaseDue,
    RequestIgnored,
    StaleTransfer,
    TokenRejected,
    TransferCompleted,
    TransferFailed,
    TransferStarted,
)
from .icmp import ExperimentalMobilityMessage, decode_icmp, icmpv6_checksum, unwrap, wrap
from .messages import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    AnyMessage,
    ContextDataBlock,
    CTReq,
    StatusEntry,
    decode,
    peek_length,
)
from .registry import ContextHandler, Registry, TransferInfo
from .state import MnState, SourceState, TargetState
from .token import compute_token, verify_token

__all__ = [
    "AccessRouter", "AnyMessage", "BAD_CHECKSUM", "BindingRejected", "CTAA", "CTAR", "CTC", "CTD", "CTDR",
    "CtaaRejected", "CtReqLimited", "StaleTransfer",
    "CT_MAX_HANDOVER_TIME", "CT_MAX_TRANSFER_TIME", "CT_REQUEST_RATE", "CT_REQUEST_RETRY",
    "CT_RETRY_MAX", "CTReq", "CXTP_HOP_LIMIT", "CXTP_SCTP_PORT", "CXTP_SCTP_PPID", "CXTP_VERSION",
    "Cancelled", "Config", "ConfigError", "IllegalTransition", "MessageDropped", "MnState",
    "ReleaseDue", "SourceState", "TargetState", "ContextActivated", "ContextDataBlock", "ContextHandler",
    "ContextInstalled", "CtaaReceived", "CxtpError", "Datagram", "DecodeError", "DecodeFailed",
    "DuplicateIgnored", "ExperimentalMobilityMessage", "HMAC_SHA1", "ICMPV4_TYPE_EXPERIMENTAL_MOBILITY",
    "ICMPV6_TYPE_EXPERIMENTAL_MOBILITY", "ICMP_SUBTYPE_CXTP", "MessageType", "MobileNode", "PCTD",
    "ProtocolError", "RateLimited", "Registry", "RequestIgnored", "STATUS_SUCCESS", "StatusEntry",
    "TRANSPORT_AR", "TRANSPORT_ICMP", "TokenRejected", "TransferCompleted", "TransferFailed",
    "TransferInfo", "TransferStarted", "compute_token", "decode", "decode_icmp", "icmpv6_checksum",
    "peek_length", "unwrap", "verify_token", "wrap",
]
