"""How long the harness waits on a broker, read off the broker's own redelivery timing:
its patience (how long without any delivery before what is missing counts as lost) and
its listening window (how long after the last message a late duplicate still counts).

A message a consumer held and never settled, or whose ack did not land, comes back
after the broker's redelivery time: a duplicate can be that late, and so can a message
that only looks lost. Both figures and the reason go into the report."""

from __future__ import annotations

from dataclasses import dataclass

#: added to the redelivery time for the listening window: a message handed back at once
#: is still a moment in transit
LISTEN_MARGIN = 0.5
#: added to the longest wait the broker can impose, for the patience
PATIENCE_MARGIN = 5.0


@dataclass(frozen=True)
class Timing:
    """`redelivery`: seconds within which a broker hands out again a message that a
    consumer held and did not settle. `stall`: seconds a broker may hold back a ready
    message from a consumer that asks (a long poll that ends only at its deadline).
    `why`: both, in words."""

    redelivery: float
    stall: float
    why: str

    @property
    def listen(self) -> float:
        """Seconds to listen for late duplicates once every message arrived."""
        return self.redelivery + LISTEN_MARGIN

    @property
    def patience(self) -> float:
        """Seconds without any delivery after which what is missing is lost."""
        return max(self.redelivery, self.stall) + PATIENCE_MARGIN

    def held_back(self, seconds: float, by: str) -> Timing:
        """This timing with `seconds` more on both counts: something between the harness
        and the broker (fault injection) holds messages back that long."""
        if not seconds:
            return self
        return Timing(self.redelivery + seconds, self.stall + seconds, f"{self.why}; {by} {seconds:g}s")
