"""Linux XFRM access and the IPsec context of a Mobile Node.

Knows XFRM netlink and the SAD/SPD; knows nothing of CXTP (the registration
of the IPsec context type with CXTP lives in ``nodes/``).
"""

from .context import (
    AF_INET,
    AF_INET6,
    IPSEC_CONTEXT_FPT,
    IPSEC_CONTEXT_VERSION,
    MAX_CONTEXT_DATA,
    Algorithm,
    IpsecContext,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    SpiChange,
    Template,
    decode_spi_changes,
    encode_spi_changes,
)
from .errors import ContextDecodeError, IpsecError, XfrmError
from .rewrite import (
    DEFAULT_OSEQ_MARGIN,
    advance_oseq,
    carry_lifetime,
    rewrite_for_mn,
    rewrite_for_nar,
)
from .transfer import (
    Installation,
    apply_mn_handover,
    apply_spi_changes,
    capture_context,
    capture_contexts,
    install_context,
    remove_context,
)
from .xfrm import Migration, Xfrm

__all__ = [name for name in dir() if not name.startswith("_")]
