"""The SQLite projector's read of the notification log: one plain query, one decode.

`EventStore.notifications` + `to_event` go through eventsourcing's recorder (a
pooled connection, a transaction context, a `Notification` per row) and its
mapper (the transcoder's recursive unwrap of every value): over a quarter of
the projector's CPU per event. This reads the same rows of eventsourcing's own
`stored_events` table (its layout, read only) on a connection of its own, and
builds each event exactly as the mapper would: the class from the topic, the
state decoded, the identity fields set, `__dict__` assigned without `__init__`.

The decode is short only where it is exact: a state whose one registered-type
value is its `timestamp` (every event bmo writes). Counting the bytes `"_type_"`
cannot hide a wrapper: a key is always written as those bytes, so a second one is
counted; text can only add to the count (e.g. a message ending in `"_type_`), which
sends that event down the mapper's path, never past it. Anything else (a
nested registered type, an upcast class version, a document msgspec refuses)
goes through the store's own mapper.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

from app.events.store import EventStore

__all__ = ["NotificationReader"]

# eventsourcing's SQLite recorder: the notification id is the table's rowid
_SELECT = (
    "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
    "WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
_TYPE_KEY = b'"_type_"'


class NotificationReader:
    """Events after a position, with their notification ids, read from the store's file."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._conn = sqlite3.connect(store.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._decode = msgspec.json.Decoder().decode

    def read(self, after: int, limit: int) -> list[tuple[int, DomainEvent]]:
        """Up to `limit` events after notification `after`, oldest first."""
        rows = self._conn.execute(_SELECT, (after, limit)).fetchall()
        return [(row[0], self._event(*row)) for row in rows]

    def close(self) -> None:
        self._conn.close()

    def _event(
        self, position: int, originator_id: str, version: int, topic: str, state: bytes
    ) -> DomainEvent:
        cls = resolve_topic(topic)
        event_state = self._short_decode(cls, state)
        if event_state is None:
            note = Notification(
                id=position,
                originator_id=UUID(originator_id),
                originator_version=version,
                topic=topic,
                state=state,
            )
            return self._store.to_event(note)
        event_state["originator_id"] = UUID(originator_id)
        event_state["originator_version"] = version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event  # type: ignore[no-any-return]

    def _short_decode(self, cls: type, state: bytes) -> dict[str, Any] | None:
        """The state as the transcoder decodes it, or None where only the mapper is exact."""
        if state.count(_TYPE_KEY) != 1 or getattr(cls, "class_version", 1) != 1:
            return None
        try:
            raw: Any = self._decode(state)
        except msgspec.DecodeError:
            return None
        stamp = raw.get("timestamp") if type(raw) is dict else None
        if type(stamp) is not dict or len(stamp) != 2 or stamp.get("_type_") != "datetime_iso":
            return None
        data = stamp.get("_data_")
        if type(data) is not str or "class_version" in raw:
            return None
        try:
            raw["timestamp"] = datetime.fromisoformat(data)
        except ValueError:  # the mapper raises its own error for it
            return None
        decoded: dict[str, Any] = raw
        return decoded
