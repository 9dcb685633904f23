"""`bmo store copy`: a SQLite history moved to PostgreSQL, served from there unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg

from tests.e2e.server import BmoServer
from tests.e2e.test_multi_instance import get, wait_until


def bmo(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return bmo_with(data, {}, *args)


def bmo_with(data: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BMO_GLOBAL_DATA": str(data), "BMO_GLOBAL_CONFIG": str(data.parent / "no-config")}
    env.pop("BMO_STORE_URL", None)
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=120
    )


def leave_an_open_run(data: Path) -> str:
    """A run fired and never finished, as a crash leaves it."""
    from app.commands import fire_run
    from app.commands.fire_run import FireRun
    from app.events.run import RunState
    from app.events.select import open_event_store

    store = open_event_store(data)
    run_id = uuid4()
    command = FireRun(
        run_id=run_id,
        at=datetime.now(UTC),
        session_id="",
        route="chat_completions",
        model="bmo/local",
        stream=True,
        tool_policy="chat_only",
        ambiguity_action="ask",
        is_session_reuse=False,
        client_ua="x",
    )
    store.save(fire_run.decide(RunState(run_id), command))
    store.close()
    return run_id.hex


def sqlite_events(data: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(data / "events.db") as conn:
        rows = conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events ORDER BY rowid"
        ).fetchall()
    return [(i, str(o).replace("-", ""), v, t, bytes(s)) for i, o, v, t, s in rows]


def pg_events(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM bmo_events ORDER BY notification_id"
        ).fetchall()
    return [(i, o.hex, v, t, bytes(s)) for i, o, v, t, s in rows]


def test_copy_moves_the_history_verbatim_and_the_target_serves_it(
    make_server: Callable[..., BmoServer], postgres_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = make_server(data_dir=data)
    with httpx.Client(base_url=first.base_url, headers=first.headers, timeout=30) as h:
        for text in ("hello", "list files", "search for TODO"):
            body = {"model": "bmo/local", "messages": [{"role": "user", "content": text}]}
            assert h.post("/v1/chat/completions", json=body).status_code == 200
    before = get(first, "/v1/openai-compat/runs", route="chat_completions")["data"]
    first.stop()
    open_run = leave_an_open_run(data)

    copied = bmo(data, "store", "copy", "--to", postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert "events" in copied.stderr and "verified:" in copied.stdout
    source = sqlite_events(data)
    assert pg_events(postgres_url) == source  # same ids, streams, versions, topics, bytes
    assert f"verified: {len(source)} events" in copied.stdout

    # the operator CLI reads the copy when pointed at it
    env_pg = {"BMO_STORE_URL": postgres_url}
    ledger = bmo_with(data, env_pg, "config", "show-run-ledger", "--json")
    assert ledger.returncode == 0, ledger.stderr
    report = json.loads(ledger.stdout)
    assert report["event_store"].startswith("postgresql://")
    assert report["routes"]["chat_completions"] == len(before) + 1  # and the crashed one
    listed = bmo_with(data, env_pg, "runs", "list", "--json", "--route", "chat_completions")
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == len(before) + 1

    # the first instance on the copy serves the same ledger, and closes the crashed run
    served = make_server(
        data_dir=tmp_path / "data-pg",
        extra_env={"BMO_STORE_URL": postgres_url},
        config_text="[options.store]\nlease_s = 1.0\n",
    )
    after = get(served, "/v1/openai-compat/runs", route="chat_completions")["data"]
    assert [r for r in after if r["request_id"] != open_run] == before
    closed = wait_until(
        lambda: next(
            (
                r
                for r in get(served, "/v1/openai-compat/runs")["data"]
                if r["request_id"] == open_run and r["outcome"]
            ),
            None,
        ),
        what="the crashed run closed",
    )
    assert (closed["outcome"], closed["error"]) == ("error_500", "interrupted")
    served.stop()

    refused = bmo(data, "store", "copy", "--to", postgres_url)
    assert refused.returncode == 2 and "already holds" in refused.stderr and "--replace" in refused.stderr
    assert "Traceback" not in refused.stderr
    replaced = bmo(data, "store", "copy", "--to", postgres_url, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert pg_events(postgres_url) == source


def test_copy_refuses_what_it_cannot_use(tmp_path: Path, postgres_url: str) -> None:
    not_pg = bmo(tmp_path / "data", "store", "copy", "--to", "mysql://u:secret@db/x")
    assert not_pg.returncode == 2 and "postgresql://" in not_pg.stderr and "secret" not in not_pg.stderr
    nothing = bmo(tmp_path / "empty", "store", "copy", "--to", postgres_url)
    assert nothing.returncode == 2 and "no event store" in nothing.stderr
    data = tmp_path / "data"
    leave_an_open_run(data)
    down = bmo(data, "store", "copy", "--to", "postgresql://nobody:pw@127.0.0.1:1/x")
    assert down.returncode == 2 and "failed" in down.stderr and "Traceback" not in down.stderr
    assert "pw" not in down.stderr


def test_serve_refuses_an_unusable_store_url_without_showing_the_password(tmp_path: Path) -> None:
    for url, says in (
        ("mysql://u:secret@db/x", "BMO_STORE_URL must be empty"),
        (
            "postgresql://u:secret@127.0.0.1:1/x",
            "cannot open the event store at postgresql://u@127.0.0.1:1/x",
        ),
    ):
        served = bmo_with(
            tmp_path / "data", {"BMO_STORE_URL": url}, "serve", "--allow-no-auth", "--addr", "127.0.0.1:0"
        )
        assert served.returncode == 2, served.stderr
        assert says in served.stderr and "secret" not in served.stderr and "Traceback" not in served.stderr
