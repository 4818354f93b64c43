"""Linux XFRM access and the IPsec context of a Mobile Node.

Knows XFRM netlink and the SAD/SPD; knows nothing of CXTP (the registration
of the IPsec context type with CXTP lives in ``nodes/``).
"""

from .addresses import AF_INET, AF_INET6, normalise_address, same_address
from .context import (
    IPSEC_CONTEXT_FPT,
    IPSEC_CONTEXT_VERSION,
    MAX_CONTEXT_DATA,
    Algorithm,
    IpsecContext,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    SpiChange,
    decode_spi_changes,
    encode_spi_changes,
)

# values made from the kernel's declarations (ipsec/layout.py)
from .context import LifetimeConfig, LifetimeCurrent, Mark, Selector, Template
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
    PreparedInstall,
    PreparedMove,
    apply_mn_handover,
    apply_prepared_move,
    discard_prepared_move,
    finish_prepared_move,
    apply_spi_changes,
    capture_context,
    capture_contexts,
    context_concerning,
    context_without,
    refresh_context,
    install_context,
    install_prepared,
    install_prepared_policies,
    install_prepared_sas,
    prepare_install,
    prepare_mn_handover,
    remove_context,
)
from .xfrm import Migration, Xfrm

__all__ = [name for name in dir() if not name.startswith("_")]
