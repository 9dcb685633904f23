"""What an instance knows of its own lease, on its own clock.

On a shared store another instance closes this instance's runs only once this
instance's lease has expired (its sweep reads the lease on the database's
clock). So while the lease is surely held, nothing but this instance can have
ended its runs, and its hot path needs no store round trip to know it. The
instance counts the lease as surely held for half of `lease_s` after the moment
it *asked* for the last renewal that succeeded (the database stamped the expiry
later than that, so this errs on the safe side); the other half is left for the
appends it has in flight to land before any sweeper could decide against it.
A renewal after a gap (the process was paused, or the store was away) proves
nothing about the gap: it starts a new epoch, and runs begun before it stay
suspect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OwnLease"]


@dataclass(slots=True)
class OwnLease:
    lease_s: float
    clock: Callable[[], float] = time.monotonic  # keeps counting while the process is stopped
    epoch: int = 0  # counts the lapses: a run begun in an earlier epoch may have been swept
    _sure_until: float = 0.0  # nothing renewed yet: not surely held

    def asked(self) -> float:
        """The moment a renewal is asked for (pass it to `renewed` once it succeeded)."""
        return self.clock()

    def renewed(self, asked_at: float) -> None:
        if asked_at >= self._sure_until:  # held with a gap (a pause, an outage): a new epoch
            self.epoch += 1
        self._sure_until = max(self._sure_until, asked_at + self.lease_s / 2)

    def surely_held(self) -> bool:
        return self.clock() < self._sure_until
