"""The IPsec context as a CXTP context type: the glue between the two cores.

``cxtp`` knows nothing of IPsec and ``ipsec`` nothing of CXTP (the paper keeps its CXTP module
and its IPsec module apart for the same reason); this module registers the IPsec context with a
node's CXTP registry and maps the registry's hooks onto kernel operations:

========================  =============================================================
hook (RFC 4067 role)      what happens in the kernel
========================  =============================================================
``collect`` (pAR)          read the MN's SAs (keys, replay state, used lifetime) and policies
``install`` (nAR)          decode and keep the context, inactive (nothing in the kernel yet:
                           the MN's new care-of address is known only from its CTAR)
``activate`` (nAR)         rewrite per Tables II/IV (MN_p -> MN_n, pAR -> nAR, fwd policy),
                           install all-or-nothing; a colliding inbound SPI is replaced and
                           the change goes to the MN in the CTAA
``discard`` (nAR)          forget the inactive context
``release`` (pAR)          delete the MN's SAs and policies (the nAR confirmed with CTDR)
``acknowledged`` (MN)      apply the nAR's SPI changes to the MN's outbound SA
========================  =============================================================

It also builds the static access policies of the ARs and the initial context of an attach (the
paper's Fig. 5: the static SAs of §VI-A, in tunnel mode between the MN's care-of address and its
AR, inner MN <-> HA).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal

from cxtp.constants import ICMPV6_TYPE_EXPERIMENTAL_MOBILITY
from ipsec import (
    IPSEC_CONTEXT_FPT,
    Algorithm,
    IpsecContext,
    IpsecError,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    XfrmError,
    PreparedMove,
    apply_mn_handover,
    apply_prepared_move,
    discard_prepared_move,
    finish_prepared_move,
    apply_spi_changes,
    capture_context,
    context_concerning,
    context_without,
    decode_spi_changes,
    encode_spi_changes,
    install_context,
    install_prepared,
    install_prepared_policies,
    install_prepared_sas,
    prepare_install,
    prepare_mn_handover,
    refresh_context,
    remove_context,
    rewrite_for_mn,
    rewrite_for_nar,
    same_address,
)
from ipsec.addresses import normalise_address
from ipsec.xfrm_messages import (
    XFRM_MODE_TRANSPORT,
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)

# CTAA/CTDR status codes of the IPsec context type (RFC 4067 §2.3 leaves them to the type).
STATUS_OK = 0x00
STATUS_NO_CONTEXT = 0x10        # activate without a context
STATUS_BAD_CONTEXT = 0x11       # the context did not decode
STATUS_INSTALL_FAILED = 0x12    # the kernel refused it (nothing left installed)

# Policy priorities: lower wins. MN tunnels beat the operator's access-link block, and the
# bypasses (neighbour discovery, CXTP's ICMPv6, Mobile IPv6 signalling, IKE) beat everything.
PRIORITY_ANTI_SPOOF = 1  # an AR forwards nothing claiming to be its own: before any bypass
PRIORITY_BYPASS = 10
PRIORITY_TUNNEL = 1000
PRIORITY_BLOCK = 0x7FFFF000  # below the priorities charon computes for its own policies

IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMPV6, IPPROTO_MH = 6, 17, 132, 58, 135

# Algorithm profiles for the initial attach: a modern default and the paper's des-cbc.
PROFILES = {
    "aes-gcm": lambda: (Algorithm("aead", "rfc4106(gcm(aes))", os.urandom(20), 128),),
    "aes-cbc-sha256": lambda: (Algorithm("crypt", "cbc(aes)", os.urandom(16), 128),
                               Algorithm("auth_trunc", "hmac(sha256)", os.urandom(32), 128)),
    "des-cbc": lambda: (Algorithm("crypt", "cbc(des)", os.urandom(8), 64),
                        Algorithm("auth_trunc", "hmac(sha1)", os.urandom(20), 96)),
}


def warm_up_crypto(xfrm, profiles=tuple(PROFILES)) -> dict[str, bool]:
    """Add and delete one SA per algorithm profile: in a fresh UML kernel the first SA of an
    algorithm takes seconds (crypto template set-up), which nothing measured may pay. Returns,
    per profile, whether the kernel took it (DES may be missing from a kernel)."""
    taken = {}
    for spi, profile in enumerate(profiles, start=0x7E57):
        sa = SecurityAssociation(daddr="2001:db8:ff::2", saddr="2001:db8:ff::1", spi=spi,
                                 algorithms=PROFILES[profile]())
        try:
            xfrm.add_sa(sa)
        except XfrmError:
            taken[profile] = False
            continue
        xfrm.delete_sa(sa.daddr, sa.spi)
        taken[profile] = True
    return taken


def ar_ar_contexts(ar_a: str, ar_b: str, profile: str, spi_a_to_b: int = 0x5091A,
                   spi_b_to_a: int = 0x5091B) -> tuple[IpsecContext, IpsecContext]:
    """ESP in transport mode between two ARs for CXTP over SCTP and TCP (RFC 4067 §6.2: ARs MUST
    protect CXTP with ESP, non-null encryption and authentication; the SAs are set up in advance
    so that no handover waits for a key exchange). Returns (ar_a's context, ar_b's context)."""
    a_to_b = SecurityAssociation(daddr=ar_b, saddr=ar_a, spi=spi_a_to_b, mode=XFRM_MODE_TRANSPORT,
                                 algorithms=PROFILES[profile]())
    b_to_a = SecurityAssociation(daddr=ar_a, saddr=ar_b, spi=spi_b_to_a, mode=XFRM_MODE_TRANSPORT,
                                 algorithms=PROFILES[profile]())
    transport = (Template(daddr="::", saddr="::", mode=XFRM_MODE_TRANSPORT),)

    def policies(local: str, remote: str) -> tuple[SecurityPolicy, ...]:
        result = []
        for proto in (IPPROTO_SCTP, IPPROTO_TCP):
            out = Selector(saddr=local, daddr=remote, prefixlen_s=128, prefixlen_d=128, proto=proto)
            into = Selector(saddr=remote, daddr=local, prefixlen_s=128, prefixlen_d=128, proto=proto)
            result += [SecurityPolicy(selector=out, dir=XFRM_POLICY_OUT, templates=transport, priority=PRIORITY_TUNNEL),
                       SecurityPolicy(selector=into, dir=XFRM_POLICY_IN, templates=transport, priority=PRIORITY_TUNNEL)]
        return tuple(result)

    return (IpsecContext(sas=(a_to_b, b_to_a), policies=policies(ar_a, ar_b)),
            IpsecContext(sas=(a_to_b, b_to_a), policies=policies(ar_b, ar_a)))


def cxtp_requires_esp(port: int = 5091) -> tuple[SecurityPolicy, ...]:
    """CXTP between ARs only under ESP, whoever the peer (RFC 4067 §6.2): SCTP and TCP to or from
    the CXTP port, in and out, any address, need an ESP transport SA. The kernel then drops CXTP
    in clear from any host that is not a configured peer AR (it has no SA with us), and never
    sends CXTP in clear to one (no SA: nothing leaves). The per-peer policies of
    :func:`ar_ar_contexts` take precedence for the peers themselves.

    And an AR forwards no CXTP: a host that forges CXTP with this AR's link address as source and
    sends it to the peer through this AR would otherwise have it wrapped in this AR's own SA (the
    per-peer ``out`` policy also selects forwarded packets), and the peer would take it for this
    AR's. Legitimate CXTP never crosses an AR: the ARs speak it to each other directly."""
    transport = (Template(daddr="::", saddr="::", mode=XFRM_MODE_TRANSPORT),)
    policies = []
    for proto in (IPPROTO_SCTP, IPPROTO_TCP):
        for side in ("sport", "dport"):
            selector = Selector(proto=proto, **{side: port, f"{side}_mask": 0xFFFF})
            for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
                policies.append(SecurityPolicy(selector=selector, dir=direction, templates=transport,
                                               priority=PRIORITY_TUNNEL + 1))
            policies.append(SecurityPolicy(selector=selector, dir=XFRM_POLICY_FWD, action=XFRM_POLICY_BLOCK,
                                           priority=PRIORITY_BYPASS))
    return tuple(policies)


def no_forwarding_as(addresses) -> tuple[SecurityPolicy, ...]:
    """An AR forwards nothing that claims to come from the AR itself. Its ``out`` policies select
    packets by their addresses, forwarded ones too: a forgery with the AR's link address as source,
    sent to the peer AR through this AR, would be wrapped in this AR's own ESP SA, and the peer
    would take it for this AR's. The port-based block of :func:`cxtp_requires_esp` does not see
    fragments (their flow has no ports); this does, whatever the protocol."""
    return tuple(SecurityPolicy(selector=Selector(saddr=address, prefixlen_s=128), dir=XFRM_POLICY_FWD,
                                action=XFRM_POLICY_BLOCK, priority=PRIORITY_ANTI_SPOOF)
                 for address in dict.fromkeys(addresses) if ipaddress.ip_address(address) != ipaddress.ip_address("::"))


#: ICMPv6 types that stay outside every tunnel: neighbour discovery (RFC 4861: RS, RA, NS, NA,
#: Redirect) and CXTP's Experimental Mobility (CTAR, CTAA; RFC 4067 §3.2). Nothing else: an echo,
#: an error or any other ICMPv6 message between the MN and the HA goes through the tunnel like
#: the rest of their traffic. MLD needs no bypass: its reports and queries go to link-local
#: multicast groups from link-local sources, which no tunnel or block selector here matches.
ND_ICMPV6_TYPES = (133, 134, 135, 136, 137)
CXTP_ICMPV6_TYPE = ICMPV6_TYPE_EXPERIMENTAL_MOBILITY
SIGNALLING_ICMPV6_TYPES = (*ND_ICMPV6_TYPES, CXTP_ICMPV6_TYPE)


def icmpv6_selector(icmp_type: int, **fields) -> Selector:
    """A selector for one ICMPv6 type, any code. XFRM carries the ICMPv6 type in the selector's
    source port and the code in its destination port (the kernel's flow key aliases
    ``fl6_icmp_type`` to the source port, in network order: ``ip xfrm`` shows ``type 135``);
    ``dport_mask`` 0 leaves the code free."""
    return Selector(proto=IPPROTO_ICMPV6, sport=icmp_type, sport_mask=0xFFFF, **fields)


def _signalling_selectors(**fields) -> tuple[Selector, ...]:
    """Neighbour discovery, CXTP's ICMPv6 and the Mobility Header, nothing more."""
    return (*(icmpv6_selector(icmp_type, **fields) for icmp_type in SIGNALLING_ICMPV6_TYPES),
            Selector(proto=IPPROTO_MH, **fields))


def mn_bypass_policies(ha: str | None = None) -> tuple[SecurityPolicy, ...]:
    """The MN's signalling stays outside the tunnel (paper §VI-A: MIPv6 signalling is not protected
    by it, and the CTAR must not be): neighbour discovery, CXTP's ICMPv6 type 150 and the Mobility
    Header, both directions, any address, so that they are no part of the context that moves.
    Any other ICMPv6 (an echo to the HA, say) is the tunnel's like any other traffic. With ``ha``,
    everything else the MN sends to the HA is blocked unless a tunnel policy (higher priority)
    takes it: the protected flow never leaves the MN in clear, also between an attach and the
    moment its SAs serve the new address."""
    bypass = tuple(SecurityPolicy(selector=selector, dir=direction, priority=PRIORITY_BYPASS)
                   for selector in _signalling_selectors() for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT))
    if ha is None:
        return bypass
    guard = SecurityPolicy(selector=Selector(daddr=ha, prefixlen_d=128), dir=XFRM_POLICY_OUT,
                           action=XFRM_POLICY_BLOCK, priority=PRIORITY_BLOCK)
    return (*bypass, guard)


def initial_contexts(mn: str, ar: str, ha: str, profile: str, spi_mn_in: int, spi_mn_out: int,
                     reqid: int = 1) -> tuple[IpsecContext, IpsecContext]:
    """The MN's and the AR's context after the initial attach (paper Fig. 5, Tables I-IV "p").

    SA1 carries AR -> MN (SPI chosen by the MN, its receiver), SA2 MN -> AR. Both are tunnel
    mode with wildcard SA selectors (as IKE daemons install them), so that XFRM migrate can move
    them; the policies carry the inner addresses MN <-> HA.
    """
    if profile not in PROFILES:
        raise IpsecError(f"unknown algorithm profile {profile!r} (known: {', '.join(PROFILES)})")
    sa1 = SecurityAssociation(daddr=mn, saddr=ar, spi=spi_mn_in, reqid=reqid, algorithms=PROFILES[profile]())
    sa2 = SecurityAssociation(daddr=ar, saddr=mn, spi=spi_mn_out, reqid=reqid, algorithms=PROFILES[profile]())
    mn_ha = Selector(saddr=mn, daddr=ha, prefixlen_s=128, prefixlen_d=128)
    ha_mn = Selector(saddr=ha, daddr=mn, prefixlen_s=128, prefixlen_d=128)
    to_ar = Template(daddr=ar, saddr=mn, reqid=reqid)
    to_mn = Template(daddr=mn, saddr=ar, reqid=reqid)
    mn_side = IpsecContext(sas=(sa1, sa2), policies=(
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_OUT, templates=(to_ar,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=ha_mn, dir=XFRM_POLICY_IN, templates=(to_mn,), priority=PRIORITY_TUNNEL),
    ))
    ar_side = IpsecContext(sas=(sa1, sa2), policies=(
        SecurityPolicy(selector=ha_mn, dir=XFRM_POLICY_OUT, templates=(to_mn,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_IN, templates=(to_ar,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_FWD, templates=(to_ar,), priority=PRIORITY_TUNNEL),
    ))
    return mn_side, ar_side


def access_policies(access_prefix: str) -> tuple[SecurityPolicy, ...]:
    """The operator's policy, the same on every AR (paper §V-A2: ISPs share one SPD).

    No plaintext leaves the AR towards its access link except signalling: neighbour discovery,
    CXTP's CTAA (ICMPv6 type 150), Mobile IPv6 signalling and IKE's answers. Nothing in clear from
    the access link is forwarded except Mobile IPv6 signalling (the Binding Update to the HA):
    neighbour discovery and the CTAR end at the AR, and an MN's other traffic travels in its
    tunnel. Without it a nAR that has not yet received an MN's context would forward the HA's
    traffic to the MN in clear; with it, that traffic waits for the context (RFC 4067 §3.1: the
    nAR should not process the MN's traffic before the transfer completes).
    """
    network = ipaddress.ip_network(access_prefix)
    prefix, length = network.network_address.compressed, network.prefixlen
    policies = []
    for direction, selector_side in ((XFRM_POLICY_OUT, "daddr"), (XFRM_POLICY_FWD, "saddr")):
        side = {selector_side: prefix, f"prefixlen_{selector_side[0]}": length}
        if direction == XFRM_POLICY_OUT:
            allowed = [*_signalling_selectors(**side),
                       # IKE answers from the AR to the MN
                       *(Selector(proto=IPPROTO_UDP, sport=port, sport_mask=0xFFFF, **side) for port in (500, 4500))]
        else:
            allowed = [Selector(proto=IPPROTO_MH, **side)]
        policies += [SecurityPolicy(selector=selector, dir=direction, priority=PRIORITY_BYPASS)
                     for selector in allowed]
        policies.append(SecurityPolicy(selector=Selector(**side), dir=direction, action=XFRM_POLICY_BLOCK,
                                       priority=PRIORITY_BLOCK))
    return tuple(policies)


class InstallFault:
    """A fault injected into the nAR's next install (fault tests only): after ``after`` kernel
    writes, either the kernel "refuses" the next one (``fail``) or the agent dies on the spot
    (``die``, SIGKILL: no rollback runs in the process), as a crash would."""

    def __init__(self, xfrm, after: int, action: str) -> None:
        if action not in ("fail", "die"):
            raise ValueError(f"install fault action must be fail or die, got {action!r}")
        self._xfrm, self.after, self.action = xfrm, after, action

    def send_batch(self, requests: list[bytes]):
        """A batch: the first ``after`` requests reach the kernel, then the fault strikes."""
        if self.after >= len(requests):
            self.after -= len(requests)
            return self._xfrm.send_batch(requests)
        head = self._xfrm.send_batch(requests[:self.after]) if self.after else []
        self.after = 0
        if self.action == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return head + [XfrmError(errno.ENOSPC, "injected fault in a batch")] * (len(requests) - len(head))

    def __getattr__(self, name):
        attribute = getattr(self._xfrm, name)
        if name not in ("add_sa", "update_sa", "add_policy", "allocate_spi"):
            return attribute

        def write(*args, **kwargs):
            if self.after <= 0:
                if self.action == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise XfrmError(errno.ENOSPC, f"injected fault in {name}")
            self.after -= 1
            return attribute(*args, **kwargs)

        return write


def run_now(_label: str, work) -> None:
    """The ``defer`` of a handler outside an agent (tests, benchmarks): the work runs at once."""
    work()


class InstallJournal:
    """What the nAR is about to write into the kernel for an MN, on disk until the write is done.

    Rollback cannot live only in the process that writes: if the agent dies half way, the next
    agent start reads the journal and removes what the dead one may have left, and nothing else:
    only what names the journalled MN address. (A process crash, not a machine crash: no fsync.)"""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        if directory:
            os.makedirs(directory, exist_ok=True)

    def _path(self, mn_address: str) -> str:
        return os.path.join(self.directory, "install-" + ipaddress.ip_address(mn_address).exploded.replace(":", "") + ".ctx")

    def begin(self, mn_address: str) -> None:
        """The MN address, in one write of a few octets (a process that dies cannot leave half of
        it): recovery removes everything of that address, so the context itself is not needed,
        and encoding it would cost the nAR's install path a millisecond in the guest."""
        if self.directory:
            descriptor = os.open(self._path(mn_address), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(descriptor, ipaddress.ip_address(mn_address).compressed.encode() + b"\n")
            finally:
                os.close(descriptor)

    def end(self, mn_address: str) -> None:
        if self.directory:
            try:
                os.unlink(self._path(mn_address))
            except FileNotFoundError:
                pass

    def recover(self, xfrm) -> list[str]:
        """Remove what unfinished installs left: everything of the journalled MN address on this
        node (an SPI from ALLOCSPI is not in the journal, but its SA names the MN too)."""
        handled = []
        if not self.directory:
            return handled
        for name in sorted(os.listdir(self.directory)):
            if not (name.startswith("install-") and name.endswith(".ctx")):
                continue
            path = os.path.join(self.directory, name)
            with open(path, "rb") as handle:
                mn_address = handle.readline().decode().strip()
            remove_context(xfrm, capture_context(xfrm, mn_address))
            os.unlink(path)
            handled.append(mn_address)
        return handled


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
        recovered = self.journal.recover(xfrm)
        if recovered:
            self.trace("ipsec_journal_recovered", mns=recovered)

    def know_installed(self, context: IpsecContext) -> None:
        """A context installed here outside a transfer (provisioned): known per MN address."""
        ends = {normalise_address(end) for sa in context.sas for end in (sa.saddr, sa.daddr)}
        for end in ends - {normalise_address(self.own_address)}:
            self.installed[end] = context_concerning(context, end)

    def _collect_known(self, mn_address: str) -> IpsecContext | None:
        known = self.installed.pop(normalise_address(mn_address), None)
        if known is None or not known.sas:
            return None
        try:
            return refresh_context(self.xfrm, known)
        except XfrmError:  # an SA went (expired, removed by hand): what the kernel holds counts
            return None

    def collect(self, mn_address: str) -> bytes | None:
        context = self._collect_known(mn_address) or capture_context(self.xfrm, mn_address)
        if not context.sas:
            return None
        self.collected[mn_address] = context
        self.trace("ipsec_collected", mn=mn_address, sas=len(context.sas), policies=len(context.policies))
        return context.encode()

    def install(self, mn_address: str, data: bytes, transfer) -> int:
        try:
            context = IpsecContext.decode(data)
        except IpsecError as error:
            self.trace("ipsec_install_failed", mn=mn_address, error=str(error))
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
            rewritten = rewrite_for_nar(context, mn_address, predicted, par, self.own_address)
            prepared = prepare_install(self.xfrm, rewritten)
        except (IpsecError, ValueError) as error:  # the ordinary path will say what is wrong
            self.trace("ipsec_prepare_skipped", mn=mn_address, error=str(error))
            return
        # journalled before the first write: an agent that dies holding inactive SAs leaves
        # its successor a record of them
        self.journal.begin(predicted)
        try:
            install_prepared_sas(self.install_fault or self.xfrm, prepared)
        except XfrmError as error:  # a leftover, an SPI taken: the ordinary path resolves it
            self.journal.end(predicted)
            self.trace("ipsec_prepared_refused", mn=mn_address, error=str(error))
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
                install_prepared_policies(xfrm, requests)
            except XfrmError as error:  # a leftover policy: the ordinary path resolves it
                self.trace("ipsec_prepared_refused", mn=mn_address, error=str(error))
                self.install_fault = xfrm if xfrm is not self.xfrm else None
                self._unprepare(prepared)
            else:
                self.journal.end(predicted)
                self.installed[normalise_address(predicted)] = requests.context
                self.trace("ipsec_activated", mn=mn_address, new=predicted, par=par, spi_changes=[], prepared=True)
                return STATUS_OK, b""
        elif prepared is not None:
            self._unprepare(prepared)
        # The pAR's tunnel end point is the source of the SA that carried traffic to the MN.
        par = next((sa.saddr for sa in context.sas if same_address(sa.daddr, mn_address)), transfer.par_address)
        rewritten = rewrite_for_nar(context, mn_address, transfer.mn_new_address, par, self.own_address)
        xfrm, self.install_fault = (self.install_fault or self.xfrm), None
        self.journal.begin(transfer.mn_new_address)
        try:
            installation = self._install(xfrm, rewritten, transfer.mn_new_address)
        except XfrmError as error:
            self.trace("ipsec_install_failed", mn=mn_address, error=str(error))
            return STATUS_INSTALL_FAILED, b""
        finally:
            self.journal.end(transfer.mn_new_address)
        self.installed[normalise_address(transfer.mn_new_address)] = installation.context
        changes = installation.spi_changes
        self.trace("ipsec_activated", mn=mn_address, new=transfer.mn_new_address, par=par,
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
            self.trace("ipsec_install_careful", mn=mn_new_address, error=str(error))
        leftover = capture_context(self.xfrm, mn_new_address)
        if leftover.sas or leftover.policies:
            remove_context(self.xfrm, leftover)
            self.trace("ipsec_leftover_replaced", mn=mn_new_address, sas=len(leftover.sas),
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
        self.collected.pop(mn_address, None)
        self.defer("release " + mn_address, lambda: self._release_now(mn_address))

    def _release_now(self, mn_address: str) -> None:
        # What the kernel holds now, not what was collected: nothing of the MN may stay behind,
        # but for what a newer transfer put here for the same address (the MN came back before
        # this release ran): that is the MN's current state, not a leftover. A prepared transfer
        # has only its SAs in the kernel; policies with its keys are the old ones.
        newer = [self.installed.get(normalise_address(mn_address), IpsecContext())]
        newer += [IpsecContext(sas=prepared[2].context.sas) for prepared in self.prepared.values()
                  if same_address(prepared[0], mn_address)]
        context = context_without(capture_context(self.xfrm, mn_address), *newer)
        remove_context(self.xfrm, context)
        self.trace("ipsec_released", mn=mn_address, sas=len(context.sas), policies=len(context.policies))

    def forget(self, mn_address: str) -> None:
        """Drop the handler's own memory of an MN (its kernel state is the caller's business,
        but for the inactive SAs of a prepared context, which only this handler knows of)."""
        self.discard(mn_address)
        self.collected.pop(mn_address, None)
        self.installed.pop(normalise_address(mn_address), None)

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        pass  # only the MN acts on a CTAA


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
            self.trace("ipsec_prepare_skipped", mn=mn_prev, error=str(error))
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
                self.trace("ipsec_prepared_refused", mn=mn_prev, error=str(error))
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
            self.trace("ipsec_spi_changed", changes=[(c.old_spi, c.new_spi) for c in changes])

