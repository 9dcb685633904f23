"""An instance's own lease, on its own clock: when may another instance have closed its runs?"""

from __future__ import annotations

from app.events.lease import OwnLease


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_held_before_the_first_renewal() -> None:
    assert not OwnLease(10.0, clock=Clock()).surely_held()


def test_held_for_half_a_lease_from_when_the_renewal_was_asked() -> None:
    clock = Clock()
    lease = OwnLease(10.0, clock=clock)
    asked = lease.asked()
    clock.now += 3.0  # the renewal took a while: counted from the asking
    lease.renewed(asked)
    assert lease.surely_held()
    clock.now = asked + 4.99
    assert lease.surely_held()
    clock.now = asked + 5.0
    assert not lease.surely_held()


def test_renewals_without_a_gap_keep_the_epoch() -> None:
    clock = Clock()
    lease = OwnLease(4.0, clock=clock)
    lease.renewed(lease.asked())
    first = lease.epoch
    for _ in range(10):
        clock.now += 1.0  # every quarter lease, as the liveness loop renews
        lease.renewed(lease.asked())
    assert lease.epoch == first and lease.surely_held()


def test_a_renewal_after_a_pause_starts_a_new_epoch() -> None:
    """Renewing after a gap proves nothing about the gap: runs begun before stay suspect."""
    clock = Clock()
    lease = OwnLease(4.0, clock=clock)
    lease.renewed(lease.asked())
    before = lease.epoch
    clock.now += 30.0  # SIGSTOP, a long GC pause, the store away
    assert not lease.surely_held()
    lease.renewed(lease.asked())
    assert lease.surely_held() and lease.epoch == before + 1
