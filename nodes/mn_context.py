"""The IPsec context at the MN: its CXTP context handler, and the re-homing of its own SAs.

A context transfer carries nothing from or to the MN (its ``collect`` gives nothing, its
``install`` and ``activate`` refuse); the MN acts on the nAR's CTAA (``acknowledged``: it
applies the nAR's SPI changes to its outbound SA) and moves its own SAs and policies to its new
care-of address and the nAR itself (Tables I and III), from what it knows of them, prepared
before the attach when the move is expected. The status codes are the AR's
(:mod:`nodes.ar_context`).
"""

from __future__ import annotations

from ipsec import (
    IPSEC_CONTEXT_FPT,
    IpsecContext,
    IpsecError,
    PreparedMove,
    XfrmError,
    apply_mn_handover,
    apply_prepared_move,
    apply_spi_changes,
    capture_context,
    decode_spi_changes,
    discard_prepared_move,
    finish_prepared_move,
    prepare_mn_handover,
    rewrite_for_mn,
    same_address,
)
from nodes.ar_context import STATUS_INSTALL_FAILED, STATUS_NO_CONTEXT, STATUS_OK, run_now
from nodes.contracts import TraceEvent


class MnIpsecHandler:
    """ContextHandler of the IPsec context on the MN: re-home its SAs, apply SPI changes."""

    fpt = IPSEC_CONTEXT_FPT

    def __init__(self, xfrm, trace=lambda *a, **k: None) -> None:
        self.xfrm = xfrm
        self.trace = trace
        self.current_ar: str | None = None
        self.last_status: int | None = None
        self.known: IpsecContext | None = None
        self.prepared: PreparedMove | None = None

    def prepare_move(self, mn_prev: str, mn_new: str, par: str, nar: str) -> bool:
        """Before the attach, for an expected move (the MN knows its own SAs, and the candidate
        nAR and its prefix before it associates): copies of its SAs under the new addresses go
        into the kernel, inactive, and the policies' new versions are encoded, so that the
        attach costs one netlink write (:class:`ipsec.PreparedMove`). False when there is
        nothing known to prepare from, or the kernel refused the copies."""
        self.drop_prepared()
        context = self.known if self.known is not None and self._concerns(self.known, mn_prev) else None
        if context is None:
            return False
        try:
            self.prepared = prepare_mn_handover(self.xfrm, context, mn_prev, mn_new, par, nar)
        except (IpsecError, XfrmError) as error:  # the ordinary path will say what is wrong
            self.trace(TraceEvent.IPSEC_PREPARE_SKIPPED, mn=mn_prev, error=str(error))
            return False
        return True

    def drop_prepared(self) -> None:
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            discard_prepared_move(self.xfrm, prepared)

    def move(self, mn_prev: str, mn_new: str, par: str, nar: str) -> int:
        """Tables I and III: the MN's own SAs and policies now name MN_n and the nAR. The MN
        knows its own SAs (it installed or moved them), so no kernel dump is on this path unless
        that knowledge is stale; a move prepared for exactly this attach is one write, and its
        clean-up waits for :meth:`finish_move`."""
        prepared = self.prepared
        if prepared is not None and prepared.matches(mn_prev, mn_new, par, nar):
            try:
                apply_prepared_move(self.xfrm, prepared)  # a refusal also removes the copies
            except XfrmError as error:  # stale knowledge: move from what the kernel holds
                self.prepared = None
                self.trace(TraceEvent.IPSEC_PREPARED_REFUSED, mn=mn_prev, error=str(error))
                self.known = None
            else:
                self.known = prepared.moved
                self.current_ar = nar
                return len(prepared.copies)
        else:
            self.drop_prepared()
        context = self.known if self.known is not None and self._concerns(self.known, mn_prev) else None
        if context is None:
            context = capture_context(self.xfrm, mn_prev)
        apply_mn_handover(self.xfrm, context, mn_prev, mn_new, par, nar)
        self.known = rewrite_for_mn(context, mn_prev, mn_new, par, nar)
        self.current_ar = nar
        return len(context.sas)

    def finish_move(self, defer=run_now) -> None:
        """The old policies and SAs of a prepared move go, once the MN's traffic uses the new ones:
        through ``defer`` (Agent.defer: when the MN's agent is idle, at low priority), since on the
        emulator's one CPU this work would delay the nAR's activation; or now."""
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            return
        defer("finish move", lambda: finish_prepared_move(self.xfrm, prepared))

    def know(self, context: IpsecContext | None) -> None:
        """What the MN itself installed (or None: read it from the kernel next time)."""
        self.drop_prepared()
        self.known = context

    @staticmethod
    def _concerns(context: IpsecContext, address: str) -> bool:
        return bool(context.sas) and all(same_address(sa.saddr, address) or same_address(sa.daddr, address)
                                         for sa in context.sas)

    # ContextHandler hooks: the MN only receives acknowledgements.
    def collect(self, mn_address):
        return None

    def install(self, mn_address, data, transfer):
        return STATUS_INSTALL_FAILED

    def activate(self, mn_address, transfer):
        return STATUS_NO_CONTEXT, b""

    def discard(self, mn_address):
        pass

    def release(self, mn_address):
        pass

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        self.last_status = status
        if status == STATUS_OK and data and self.current_ar:
            changes = decode_spi_changes(data)
            apply_spi_changes(self.xfrm, changes, self.current_ar)
            self.known = None  # an SPI changed: read the SAs from the kernel at the next move
            self.trace(TraceEvent.IPSEC_SPI_CHANGED, changes=[(c.old_spi, c.new_spi) for c in changes])
