"""Bounds on the work one message, one source or the set of peers can cause (RFC 4067 §6.1-§6.3).

No clock is read here: every method takes ``now`` from its caller, and randomness comes from the
engine's injected :class:`random.Random`.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping

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
    """CT_REQUEST_RATE (§6.3): the rate of CTAR arrivals, estimated over a sliding window from two
    counters (this window's arrivals and the last one's, weighted by how much of it the sliding
    window still covers): constant memory and work, and an estimate that follows the real rate
    however high it goes. Above the rate each CTAR is dropped with probability
    1 - rate/observed, drawn from the engine's random generator, so about ``rate`` per second
    pass. ``exempt`` arrivals (a source the owner vouches for) are counted but never dropped."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._current = 0
        self._previous = 0

    def observed(self, now: float, window: float) -> float:
        """Arrivals per second over the sliding window ending at ``now`` (this one included
        once :meth:`limited` counted it)."""
        if self._start is None:
            return 0.0
        elapsed = min(max(now - self._start, 0.0), window)
        return (self._previous * (1.0 - elapsed / window) + self._current) / window

    def limited(self, now: float, rate: float, window: float, rng: random.Random,
                exempt: Callable[[], bool] | None = None) -> bool:
        """Whether this arrival is dropped; ``exempt`` is asked only when it would be (the owner's
        lookup stays off the path of a CTAR that is within the rate)."""
        if self._start is None:
            self._start = now
        elif now - self._start >= window:
            periods = int((now - self._start) // window)
            self._previous = self._current if periods == 1 else 0
            self._current = 0
            self._start += periods * window
        self._current += 1
        observed = self.observed(now, window)
        if observed <= rate:
            return False
        return rng.random() < 1.0 - rate / observed and not (exempt is not None and exempt())


class RequestBudget:
    """The CT-Reqs an nAR sends, all MNs together: a token bucket of ``rate`` per second holding at
    most ``burst``. A request from a source the owner vouches for (``preferred``) may take the
    last token; any other only while more than ``reserve`` remain, so that a flood of CTARs from
    sources nobody vouches for (each a CT-Req the pAR will refuse) cannot starve the MN's own.
    Whatever the mix, at most ``burst`` + ``rate`` x t CT-Reqs leave in t seconds."""

    def __init__(self) -> None:
        self._tokens: float | None = None
        self._then = 0.0

    def allow(self, now: float, rate: float, burst: float, preferred: bool | Callable[[], bool],
              reserve: float = 1.0) -> bool:
        """Take a token if this request may; ``preferred`` may be a callable, asked only when the
        answer matters (the reserve is all that is left)."""
        if self._tokens is None:
            tokens, then = float(burst), now
        else:
            tokens, then = self._tokens, self._then
        tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
        allowed = tokens >= 1.0 + reserve or (
            tokens >= 1.0 and (preferred() if callable(preferred) else preferred))
        if allowed:
            tokens -= 1.0
        self._tokens, self._then = tokens, max(now, then)
        return allowed


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
