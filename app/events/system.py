"""System events: facts about the service itself, not about a request.

Each incident is its own one-event stream (a fresh id), so processes that
share the store never contend for a version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import uuid4

from eventsourcing.domain import DomainEvent

__all__ = ["PersistenceRecovered", "persistence_recovered"]


@dataclass(frozen=True)
class PersistenceRecovered(DomainEvent):
    """Appends work again after failing: what the outbox flushed and what it lost."""

    flushed_events: int
    overflowed_events: int
    failures: int
    last_error: str


def persistence_recovered(
    flushed: int, overflowed: int, failures: int, last_error: str
) -> PersistenceRecovered:
    return PersistenceRecovered(
        originator_id=uuid4(),
        originator_version=1,
        timestamp=datetime.now(UTC),
        flushed_events=flushed,
        overflowed_events=overflowed,
        failures=failures,
        last_error=last_error,
    )
