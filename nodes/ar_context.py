"""The IPsec context at an access router: the CXTP context handler of the pAR and nAR roles.

``cxtp`` knows nothing of IPsec and ``ipsec`` nothing of CXTP (the paper keeps its CXTP module
and its IPsec module apart for the same reason). :class:`ArIpsecHandler` is the glue: the AR
agent registers it with its CXTP registry, and it maps the registry's hooks onto kernel
operations:

========================  =============================================================
hook (RFC 4067 role)      what happens in the kernel
========================  =============================================================
``collect`` (pAR)          read the MN's SAs (keys, replay state, used lifetime) and policies
``install`` (nAR)          decode and keep the context, inactive. When the MN's new care-of
                           address is not known yet (it comes with the CTAR), predict it
                           (this link's prefix, the MN's old interface identifier), rewrite
                           the context for it and install its SAs now, without policies:
                           nothing uses them until the activation. When it is known (a CTD
                           answering the nAR's CT-Req), nothing goes into the kernel here:
                           the activation follows at once
``activate`` (nAR)         for the predicted address, add the prepared policies (one write);
                           otherwise rewrite per Tables II/IV (MN_p -> MN_n, pAR -> nAR, fwd
                           policy), install all-or-nothing; a colliding inbound SPI is
                           replaced and the change goes to the MN in the CTAA
``discard`` (nAR)          forget the inactive context, and remove its prepared SAs
``release`` (pAR)          delete the MN's SAs and policies (the nAR confirmed with CTDR),
                           deferred off the critical path
========================  =============================================================

An install writes to the kernel only while the MN's new address is in the install journal
(:mod:`nodes.install_journal`). The status codes are those of the IPsec context type in the
CTAA and CTDR: the nAR sets them, the MN's handler (:mod:`nodes.mn_context`) reads them.
"""

from __future__ import annotations

import ipaddress

from ipsec import (
    DEFAULT_OSEQ_MARGIN,
    IPSEC_CONTEXT_FPT,
    IpsecContext,
    IpsecError,
    SequenceSpaceExhausted,
    XfrmError,
    advance_oseq,
    capture_context,
    context_concerning,
    context_without,
    encode_spi_changes,
    install_context,
    install_prepared,
    install_prepared_policies,
    install_prepared_sas,
    lookup_context,
    prepare_install,
    refresh_context,
    remove_context,
    rewrite_for_nar,
    same_address,
)
from ipsec.addresses import normalise_address
from nodes.contracts import TraceEvent
from nodes.install_fault import InstallFault
from nodes.install_journal import InstallJournal

# CTAA/CTDR status codes of the IPsec context type (RFC 4067 §2.3 leaves them to the type).
STATUS_OK = 0x00
STATUS_NO_CONTEXT = 0x10        # activate without a context
STATUS_BAD_CONTEXT = 0x11       # the context did not decode
STATUS_INSTALL_FAILED = 0x12    # the kernel refused it (nothing left installed)


def run_now(_label: str, work) -> None:
    """The ``defer`` of a handler outside an agent (tests, benchmarks): the work runs at once."""
    work()


class ArIpsecHandler:
    """ContextHandler of the IPsec context on an access router (pAR and nAR roles)."""

    fpt = IPSEC_CONTEXT_FPT

    def __init__(self, xfrm, own_address: str, trace=lambda *a, **k: None, state_dir: str | None = None,
                 defer=run_now) -> None:
        self.xfrm = xfrm
        self.own_address = own_address
        self.trace = trace
        # where the release's kernel work goes: off the critical path (Agent.defer), or now
        self.defer = defer
        self.inactive: dict[str, IpsecContext] = {}
        self.prepared: dict[str, tuple] = {}  # MN -> (predicted new address, pAR, PreparedInstall)
        self.collected: dict[str, IpsecContext] = {}
        # What this node installed for each MN address (a transfer's activation, a provisioned
        # context), as installed: the pAR reads its SAs back in one request instead of dumping
        # the tables, and a release that comes late spares it.
        self.installed: dict[str, IpsecContext] = {}
        self.journal = InstallJournal(state_dir)
        self.install_fault: InstallFault | None = None
        #: how far a transferred SA's outbound sequence numbers start ahead of the captured ones
        #: (ipsec.oseq_margin: from the highest packet rate and the longest wait for activation)
        self.oseq_margin = DEFAULT_OSEQ_MARGIN
        recovered = self.journal.recover(xfrm)
        if recovered:
            self.trace(TraceEvent.IPSEC_JOURNAL_RECOVERED, mns=recovered)

    def know_installed(self, context: IpsecContext) -> None:
        """A context installed here outside a transfer (provisioned): known per MN address."""
        ends = {normalise_address(end) for sa in context.sas for end in (sa.saddr, sa.daddr)}
        for end in ends - {normalise_address(self.own_address)}:
            self.installed[end] = context_concerning(context, end)

    def _collect_known(self, mn_address: str) -> IpsecContext | None:
        """The MN's context as the kernel holds it, found without a dump of the SPD: what this
        node installed for it, its SAs read back by key (keys, replay state, used lifetime: all
        asked in one write), its policies as installed (they carry no state a transfer needs):
        0.26 ms among 10^4 MNs in the guest. If an SA went (expired, removed by hand), what the
        kernel holds: every SA from or to the MN by the kernel's address filter, the installed
        policies read back by key (:func:`ipsec.lookup_context`; about 1 ms among 10^4 MNs, where
        a dump of the SPD took 40; ``docs/performance.md``, "Capacity"). None when this node
        installed nothing for the MN."""
        known = self.installed.pop(normalise_address(mn_address), None)
        if known is None or not known.sas:
            return None
        try:
            return refresh_context(self.xfrm, known)
        except XfrmError:
            return lookup_context(self.xfrm, mn_address, known)

    def collect(self, mn_address: str) -> bytes | None:
        context = self._collect_known(mn_address) or capture_context(self.xfrm, mn_address)
        if not context.sas:
            return None
        try:  # every SA this node sends on must still have numbers left for the nAR's margin
            for sa in context.sas:
                if same_address(sa.saddr, self.own_address):
                    advance_oseq(sa, self.oseq_margin)
        except SequenceSpaceExhausted as error:  # not transferred: the MN re-keys or re-authenticates
            self.installed[normalise_address(mn_address)] = context
            self.trace(TraceEvent.IPSEC_NOT_TRANSFERABLE, mn=mn_address, error=str(error))
            return None
        self.collected[mn_address] = context
        self.trace(TraceEvent.IPSEC_COLLECTED, mn=mn_address, sas=len(context.sas), policies=len(context.policies))
        return context.encode()

    def install(self, mn_address: str, data: bytes, transfer) -> int:
        try:
            context = IpsecContext.decode(data)
        except IpsecError as error:
            self.trace(TraceEvent.IPSEC_INSTALL_FAILED, mn=mn_address, error=str(error))
            return STATUS_BAD_CONTEXT
        self.discard(mn_address)  # a context already here for the MN (a PCTD, then a CTD): this one
        self.inactive[mn_address] = context
        if not transfer.mn_new_address:  # known (a CTD answering the nAR's CT-Req): the activation
            self._prepare(mn_address, context, transfer)  # follows at once, in one write
        return STATUS_OK

    def _prepare(self, mn_address: str, context: IpsecContext, transfer) -> None:
        """Everything that can be done before the MN arrives: its new care-of address is, in all
        likelihood, this link's prefix with the interface identifier it had on the old link (as
        SLAAC forms it); the context is rewritten for that address now, its netlink requests
        encoded, and its SAs installed, inactive: no policy uses them, and the kernel drops what
        they would decapsulate (``XfrmInNoPols``) until the policies come. The CTAR, once its
        token is verified, only adds the policies: the activation. A CTAR from another address,
        or a kernel that refuses the SAs now, takes the ordinary path."""
        try:
            prefix = ipaddress.ip_network(f"{self.own_address}/64", strict=False)
            identifier = int(ipaddress.ip_address(mn_address)) & ((1 << 64) - 1)
            predicted = str(ipaddress.ip_address(int(prefix.network_address) | identifier))
            par = next((sa.saddr for sa in context.sas if same_address(sa.daddr, mn_address)), transfer.par_address)
            rewritten = rewrite_for_nar(context, mn_address, predicted, par, self.own_address, self.oseq_margin)
            prepared = prepare_install(self.xfrm, rewritten)
        except (IpsecError, ValueError) as error:  # the ordinary path will say what is wrong
            self.trace(TraceEvent.IPSEC_PREPARE_SKIPPED, mn=mn_address, error=str(error))
            return
        # journalled before the first write: an agent that dies holding inactive SAs leaves
        # its successor a record of them
        self.journal.begin(predicted)
        try:
            # an InstallFault stands in for the Xfrm it wraps (fault tests only)
            install_prepared_sas(self.install_fault or self.xfrm, prepared)  # type: ignore[arg-type]
        except XfrmError as error:  # a leftover, an SPI taken: the ordinary path resolves it
            self.journal.end(predicted)
            self.trace(TraceEvent.IPSEC_PREPARED_REFUSED, mn=mn_address, error=str(error))
            return
        self.prepared[mn_address] = (predicted, par, prepared)

    def _unprepare(self, prepared: tuple) -> None:
        """Remove a prepared context's inactive SAs (the MN went elsewhere, or the transfer ended)."""
        predicted, _par, requests = prepared
        remove_context(self.xfrm, requests.context)
        self.journal.end(predicted)

    def activate(self, mn_address: str, transfer) -> tuple[int, bytes]:
        context = self.inactive.pop(mn_address, None)
        prepared = self.prepared.pop(mn_address, None)
        if context is None or not transfer.mn_new_address:
            if prepared is not None:
                self._unprepare(prepared)
            return STATUS_NO_CONTEXT, b""
        if prepared is not None and same_address(prepared[0], transfer.mn_new_address):
            predicted, par, requests = prepared
            xfrm, self.install_fault = (self.install_fault or self.xfrm), None
            try:
                install_prepared_policies(xfrm, requests)  # type: ignore[arg-type]  # as in _prepare()
            except XfrmError as error:  # a leftover policy: the ordinary path resolves it
                self.trace(TraceEvent.IPSEC_PREPARED_REFUSED, mn=mn_address, error=str(error))
                self.install_fault = xfrm if xfrm is not self.xfrm else None
                self._unprepare(prepared)
            else:
                self.journal.end(predicted)
                self.installed[normalise_address(predicted)] = requests.context
                self.trace(TraceEvent.IPSEC_ACTIVATED, mn=mn_address, new=predicted, par=par, spi_changes=[],
                           prepared=True)
                return STATUS_OK, b""
        elif prepared is not None:
            self._unprepare(prepared)
        # The pAR's tunnel end point is the source of the SA that carried traffic to the MN.
        par = next((sa.saddr for sa in context.sas if same_address(sa.daddr, mn_address)), transfer.par_address)
        try:
            rewritten = rewrite_for_nar(context, mn_address, transfer.mn_new_address, par, self.own_address,
                                        self.oseq_margin)
        except SequenceSpaceExhausted as error:  # the pAR checks this before it sends; a pAR that did not
            self.trace(TraceEvent.IPSEC_NOT_TRANSFERABLE, mn=mn_address, error=str(error))
            return STATUS_INSTALL_FAILED, b""
        xfrm, self.install_fault = (self.install_fault or self.xfrm), None
        self.journal.begin(transfer.mn_new_address)
        try:
            installation = self._install(xfrm, rewritten, transfer.mn_new_address)
        except XfrmError as error:
            self.trace(TraceEvent.IPSEC_INSTALL_FAILED, mn=mn_address, error=str(error))
            return STATUS_INSTALL_FAILED, b""
        finally:
            self.journal.end(transfer.mn_new_address)
        self.installed[normalise_address(transfer.mn_new_address)] = installation.context
        changes = installation.spi_changes
        self.trace(TraceEvent.IPSEC_ACTIVATED, mn=mn_address, new=transfer.mn_new_address, par=par,
                   spi_changes=[(c.old_spi, c.new_spi) for c in changes])
        return STATUS_OK, encode_spi_changes(changes) if changes else b""

    def _install(self, xfrm, rewritten: IpsecContext, mn_new_address: str):
        """The context in one write (SAs, then policies) when nothing is in the way; when the
        kernel refuses (a leftover of an earlier visit, an inbound SPI another peer holds), the
        careful path: whatever this node still holds under the MN's new address is a leftover of
        the same MN and is replaced, and the context goes in request by request, resolving SPI
        collisions."""
        try:
            return install_prepared(xfrm, prepare_install(xfrm, rewritten))
        except XfrmError as error:
            if isinstance(xfrm, InstallFault) and xfrm.after <= 0:  # the injected fault fired
                raise
            self.trace(TraceEvent.IPSEC_INSTALL_CAREFUL, mn=mn_new_address, error=str(error))
        leftover = capture_context(self.xfrm, mn_new_address)
        if leftover.sas or leftover.policies:
            remove_context(self.xfrm, leftover)
            self.trace(TraceEvent.IPSEC_LEFTOVER_REPLACED, mn=mn_new_address, sas=len(leftover.sas),
                       policies=len(leftover.policies))
        return install_context(xfrm, rewritten)

    def discard(self, mn_address: str) -> None:
        self.inactive.pop(mn_address, None)
        prepared = self.prepared.pop(mn_address, None)
        if prepared is not None:
            self._unprepare(prepared)

    def release(self, mn_address: str) -> None:
        """The nAR confirmed (or the hold expired): the MN's state goes, off the critical path
        (``defer``): on the emulator's one CPU the release would otherwise delay the nAR's
        activation and the HA's Binding Ack, which in a real network run on other machines."""
        known = self.collected.pop(mn_address, None)
        self.defer("release " + mn_address, lambda: self._release_now(mn_address, known))

    def _release_now(self, mn_address: str, known: IpsecContext | None = None) -> None:
        # What the kernel holds now, not what was collected: nothing of the MN may stay behind,
        # but for what a newer transfer put here for the same address (the MN came back before
        # this release ran): that is the MN's current state, not a leftover. A prepared transfer
        # has only its SAs in the kernel; policies with its keys are the old ones.
        newer = [self.installed.get(normalise_address(mn_address), IpsecContext())]
        newer += [IpsecContext(sas=prepared[2].context.sas) for prepared in self.prepared.values()
                  if same_address(prepared[0], mn_address)]
        # What was collected is what this node installed for the MN: found without a dump of the
        # SPD (every SA from or to the MN by the kernel's filter, so that none stays behind; the
        # policies by their keys); otherwise the tables are read.
        held = lookup_context(self.xfrm, mn_address, known) if known is not None and known.sas else \
            capture_context(self.xfrm, mn_address)
        context = context_without(held, *newer)
        remove_context(self.xfrm, context)
        self.trace(TraceEvent.IPSEC_RELEASED, mn=mn_address, sas=len(context.sas), policies=len(context.policies))

    def forget(self, mn_address: str) -> None:
        """Drop the handler's own memory of an MN (its kernel state is the caller's business,
        but for the inactive SAs of a prepared context, which only this handler knows of)."""
        self.discard(mn_address)
        self.collected.pop(mn_address, None)
        self.installed.pop(normalise_address(mn_address), None)

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        pass  # only the MN acts on a CTAA
