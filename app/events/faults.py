"""A test seam: make appends fail like a full disk, on demand.

Enabled only by `BMO_TEST_APPEND_FAULTS=<path>`: while a file exists at that
path every save fails. `bmo serve` announces the seam loudly at startup and
each failure names it, so it cannot be left on silently.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from eventsourcing.domain import DomainEvent

from app.events.store import EventStore

__all__ = ["ENV_FAULTS", "FaultInjectingStore"]

ENV_FAULTS = "BMO_TEST_APPEND_FAULTS"


class FaultInjectingStore(EventStore):
    def __init__(self, path: Path, switch: Path) -> None:
        super().__init__(path)
        self.switch = switch

    def save(self, events: Sequence[DomainEvent]) -> int:
        if self.switch.exists():
            raise sqlite3.OperationalError(f"injected append fault ({ENV_FAULTS}={self.switch})")
        return super().save(events)
