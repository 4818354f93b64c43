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
    LifetimeConfig,  # LifetimeConfig ... Template: values made from the kernel's declarations (ipsec/layout.py)
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
from .errors import ContextDecodeError, IpsecError, SequenceSpaceExhausted, XfrmError
from .rewrite import (
    DEFAULT_OSEQ_MARGIN,
    advance_oseq,
    carry_lifetime,
    oseq_margin,
    rewrite_for_mn,
    rewrite_for_nar,
)
from .transfer import (
    Installation,
    PreparedInstall,
    PreparedMove,
    apply_mn_handover,
    apply_prepared_move,
    apply_spi_changes,
    capture_context,
    capture_contexts,
    context_concerning,
    context_without,
    discard_prepared_move,
    finish_prepared_move,
    install_context,
    install_prepared,
    install_prepared_policies,
    install_prepared_sas,
    lookup_context,
    prepare_install,
    prepare_mn_handover,
    refresh_context,
    remove_context,
)
from .xfrm import Migration, Xfrm

# Spelt out (it was computed from dir(): every public name, the submodules included) so that type
# checkers and linters see what is exported; keep it in step with the imports above.
__all__ = [
    "AF_INET", "AF_INET6", "Algorithm", "ContextDecodeError", "DEFAULT_OSEQ_MARGIN", "IPSEC_CONTEXT_FPT",
    "IPSEC_CONTEXT_VERSION", "Installation", "IpsecContext", "IpsecError", "LifetimeConfig",
    "LifetimeCurrent", "MAX_CONTEXT_DATA", "Mark", "Migration", "PreparedInstall", "PreparedMove",
    "ReplayState", "SecurityAssociation", "SecurityPolicy", "Selector", "SequenceSpaceExhausted", "SpiChange",
    "Template", "Xfrm",
    "XfrmError", "advance_oseq", "apply_mn_handover", "apply_prepared_move", "apply_spi_changes",
    "capture_context", "capture_contexts", "carry_lifetime", "context_concerning", "context_without",
    "decode_spi_changes", "discard_prepared_move", "encode_spi_changes", "finish_prepared_move",
    "install_context", "install_prepared", "install_prepared_policies", "install_prepared_sas", "lookup_context",
    "normalise_address", "oseq_margin", "prepare_install", "prepare_mn_handover", "refresh_context", "remove_context",
    "rewrite_for_mn", "rewrite_for_nar", "same_address",
    # the submodules, bound as attributes of the package by the imports above
    "addresses", "context", "errors", "layout", "rewrite", "transfer", "xfrm", "xfrm_messages",
]
