"""Bounds on the work one message, one source or the set of peers can cause (RFC 4067 §6.1-§6.3).

No clock is read here: every method takes ``now`` from its caller, and randomness comes from the
engine's injected :class:`random.Random`.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping

from .errors import ConfigError, ProtocolError
from .messages import normalize_address

#: most per-source buckets kept; above it, the least recently used goes
MAX_TRACKED_SOURCES = 4096


class OctetBuckets:
    """One token bucket of octets per source: ``rate`` octets/s, at most ``burst`` saved up.

    A message larger than what the bucket holds is refused and consumes nothing. Memory and work
    are bounded: at most ``max_sources`` buckets, the least recently used one dropped first (it
    has most likely refilled, so it carries no information), in constant time per message.
    """

    def __init__(self, max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source: (tokens, t)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, octets: int, now: float, rate: float, burst: float) -> bool:
        tokens, then = self._buckets.pop(source, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
        allowed = octets <= tokens
        if allowed:
            tokens -= octets
        self._buckets[source] = (tokens, max(now, then))
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed


class RequestRate:
    """CT_REQUEST_RATE (§6.3): CTAR arrivals in a sliding window; above the rate each CTAR is
    dropped with probability 1 - rate/observed, drawn from the engine's random generator."""

    def __init__(self) -> None:
        self._arrivals: deque[float] = deque()

    def limited(self, now: float, rate: float, window: float, rng: random.Random) -> bool:
        arrivals = self._arrivals
        while arrivals and arrivals[0] <= now - window:
            arrivals.popleft()
        arrivals.append(now)
        cap = max(1, int(rate * window * 4))  # memory bound; beyond 4x the rate nearly all drop
        while len(arrivals) > cap:
            arrivals.popleft()
        observed = len(arrivals) / window
        if observed <= rate:
            return False
        return rng.random() < 1.0 - rate / observed


PeersArgument = Iterable[str] | Iterable[Iterable[str]] | Mapping[str, str | Iterable[str]]


class PeerSet:
    """The ARs this AR accepts as peers, and which addresses belong to the same AR.

    ``peers`` is either

    * a mapping from the address MNs name an AR by (its access address) to the address(es) it
      sends CXTP from (its AR-AR link address), e.g. ``{"2001:db8:2::1": "2001:db8:12::2"}``:
      all of them are accepted, and they are one AR, so a CTDR from the nAR's link address
      matches the transfer to the nAR's access address; or
    * an iterable whose items are addresses (each one AR of its own) or collections of addresses
      (one AR each).

    A flat list of access and link addresses cannot say which link address belongs to which
    access address: with it, the pAR accepts a CTDR or CTC only from the very address it sent
    the context to (or learnt from a verified CT-Req). Pass the mapping.
    """

    def __init__(self, peers: PeersArgument) -> None:
        if isinstance(peers, (str, bytes)):
            raise ConfigError("peers must be a collection of addresses, not one string")
        self._group: dict[str, int] = {}
        groups: list[list[str]] = []
        if isinstance(peers, Mapping):
            for name, links in peers.items():
                groups.append([name, *([links] if isinstance(links, str) else list(links))])
        else:
            for item in peers:
                groups.append([item] if isinstance(item, str) else list(item))
        for index, members in enumerate(groups):
            for member in members:
                try:
                    address = normalize_address(member)
                except ProtocolError as exc:
                    raise ConfigError(f"peers: {exc}") from exc
                if self._group.get(address, index) != index:
                    raise ConfigError(f"peers: {address} is listed for two different ARs")
                self._group[address] = index

    @property
    def grouped(self) -> bool:
        """Whether some AR is known by more than one address."""
        return len(set(self._group.values())) < len(self._group)

    def __contains__(self, address: object) -> bool:
        return address in self._group

    def __iter__(self) -> Iterator[str]:
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)

    def same_ar(self, a: str, b: str) -> bool:
        """Whether two (normalised) addresses name the same AR."""
        if a == b:
            return True
        group = self._group.get(a)
        return group is not None and group == self._group.get(b)
