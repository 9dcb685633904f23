"""`python -m bench.commit_cost`: CPU of saving a chat request's events, eventsourcing's path vs bmo's.

A chat request appends five events (Fired, Started, ContentAppended, ModelCalled,
Finished; the replay fixture's, copied under fresh stream ids). They are saved into a
fresh SQLite store, `--per-commit` events a transaction, once through eventsourcing's
`put` (`EventStore._put`, the path before) and once through `EventStore.save`, in
interleaved rounds; the saving thread's CPU per request is reported (min and median).
At c=1 a request's events are committed as 2 + 3, at c=32 ~32 requests share a commit.

    python -m bench.commit_cost --requests 400 --rounds 5 --per-commit 2,160
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app.events.store import EventStore

__all__ = ["main"]

_KINDS = ["Fired", "Started", "ContentAppended", "ModelCalled", "Finished"]
_FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "replay" / "events.db"


def _template(workdir: Path) -> list[Any]:
    """One chat request's five events, as a real server wrote them (the replay fixture)."""
    shutil.copy(_FIXTURE, workdir / "fixture.db")
    store = EventStore(workdir / "fixture.db")
    streams: dict[Any, list[Any]] = defaultdict(list)
    for note in store.notifications(0, 100_000):
        event = store.to_event(note)
        streams[event.originator_id].append(event)
    store.close()
    return next(events for events in streams.values() if [type(e).__name__ for e in events] == _KINDS)


def _requests(template: list[Any], count: int) -> list[Any]:
    events = []
    for _ in range(count):
        stream = uuid.uuid4()
        for event in template:
            clone = copy.copy(event)
            object.__setattr__(clone, "originator_id", stream)
            events.append(clone)
    return events


def _timed(path: str, events: Sequence[Any], per_commit: int, workdir: Path) -> float:
    """Thread CPU seconds to save `events` into a fresh store, `per_commit` at a time."""
    store = EventStore(workdir / f"{uuid.uuid4().hex}.db")
    save: Callable[[Sequence[Any]], int] = store.save if path == "save" else store._put
    started = time.thread_time()
    for start in range(0, len(events), per_commit):
        save(events[start : start + per_commit])
    spent = time.thread_time() - started
    store.close()
    return spent


def main(argv: list[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-commit", default="2,160", help="events per transaction, comma-separated")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template = _template(workdir)
        events = _requests(template, args.requests)
        for per_commit in (int(n) for n in args.per_commit.split(",")):
            spent: dict[str, list[float]] = {"put": [], "save": []}
            for _ in range(args.rounds):
                for path in spent:
                    spent[path].append(_timed(path, events, per_commit, workdir) / args.requests * 1e6)
            for path, values in spent.items():
                print(
                    f"{per_commit:4d} events/commit  {path:4s}  CPU us/request "
                    f"min {min(values):6.1f}  median {statistics.median(values):6.1f}"
                )


if __name__ == "__main__":
    main()
