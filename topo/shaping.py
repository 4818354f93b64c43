"""How a scenario shapes a link class: netem (and htb for a rate) on both ends of each link."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LinkParams:
    """netem/htb shaping of a link, applied in each direction (delay is one-way)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_mbit: float | None = None

    def tclink_arguments(self) -> dict:
        # Always a netem qdisc, even at 0 ms, so that a sweep can change the link in place.
        arguments: dict = {"delay": f"{self.delay_ms}ms"}
        if self.jitter_ms:
            arguments["jitter"] = f"{self.jitter_ms}ms"
        if self.loss_percent:
            arguments["loss"] = self.loss_percent
        if self.rate_mbit:
            arguments["bw"] = self.rate_mbit
        return arguments
