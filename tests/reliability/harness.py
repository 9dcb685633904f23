"""Shared pieces of the reliability suite: streaming clients, samplers, ledger checks.

Everything here is bounded: every network call has a timeout, every thread and
subprocess is stopped by its owner in a `finally`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.e2e.server import BmoServer
from tests.reliability.slow_stream_upstream import directive, expected_content

ROOT = Path(__file__).resolve().parents[2]


def bmo_config(
    upstreams: dict[str, str],
    *,
    timeout_s: float = 30,
    max_retries: int = 2,
    connect_timeout_s: float = 5,
    capacity: int = 100_000,
    extra: str = "",
) -> str:
    """`[providers.<name>]` (type openai) for each upstream URL, plus a roomy ledger."""
    text = f"[options.openai_compat]\nledger_capacity = {capacity}\n{extra}\n"
    for name, url in upstreams.items():
        text += (
            f'\n[providers.{name}]\ntype = "openai"\nbase_url = "{url}"\napi_key = "sk-reliability"\n'
            f'models = ["fake-model"]\ntimeout_s = {timeout_s}\nconnect_timeout_s = {connect_timeout_s}\n'
            f"max_retries = {max_retries}\n"
        )
    return text


def wait_until(predicate: Callable[[], bool], timeout: float = 20, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout}s")


# ------------------------------------------------------------------ clients


@dataclass
class StreamResult:
    """What one streaming client saw."""

    nonce: str
    expected: str
    status: int = 0
    request_id: str = ""
    content: str = ""
    done: bool = False  # saw `data: [DONE]`
    error: dict[str, Any] | None = None  # an in-stream or JSON error envelope
    exception: str = ""  # transport failure on the client side
    session_id: str = ""
    started: float = 0.0
    ended: float = 0.0

    @property
    def complete(self) -> bool:
        """200, `[DONE]`, no error, and exactly the content the upstream streamed."""
        return self.status == 200 and self.done and self.error is None and self.content == self.expected


def nonce() -> str:
    return uuid.uuid4().hex[:12]


async def stream_chat(
    http: aiohttp.ClientSession,
    server: BmoServer,
    *,
    model: str,
    chunks: int,
    delay_ms: int,
    session_id: str = "",
    extra: dict[str, int] | None = None,
    timeout: float = 120,
    stream: bool = True,
    pad: int = 0,
) -> StreamResult:
    """One chat request whose answer the slow upstream streams; reads it to the end.

    `pad` adds that many filler characters to the user message (a fat session transcript).
    """
    tag = nonce()
    text = f"Please echo the stream {directive(tag, chunks=chunks, delay_ms=delay_ms, **(extra or {}))}"
    text = f"{'x' * pad} {text}" if pad else text
    result = StreamResult(nonce=tag, expected=expected_content(tag, chunks), session_id=session_id)
    headers = dict(server.headers)
    if session_id:
        headers["X-BMO-Session-Id"] = session_id
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    result.started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with http.post(
                f"{server.base_url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                result.status = response.status
                result.request_id = response.headers.get("x-request-id", "")
                if response.content_type != "text/event-stream":
                    payload = json.loads(await response.read() or b"null")
                    if isinstance(payload, dict) and "error" in payload:
                        result.error = payload["error"]
                    elif isinstance(payload, dict) and payload.get("choices"):
                        result.content = payload["choices"][0]["message"].get("content") or ""
                        result.done = True
                    return result
                await _read_sse(response, result)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        result.exception = f"{type(exc).__name__}: {exc}"
    finally:
        result.ended = time.monotonic()
    return result


async def _read_sse(response: aiohttp.ClientResponse, result: StreamResult) -> None:
    parts: list[str] = []
    try:
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                result.done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = chunk["error"]
                continue
            for choice in chunk.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    finally:
        result.content = "".join(parts)  # also what arrived before a broken connection


def client_session(limit: int = 0) -> aiohttp.ClientSession:
    """One session for many clients: no connection limit, no global timeout (calls set theirs)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


# ----------------------------------------------------------------- sampling


@dataclass
class ProcessTree:
    """The processes of one `bmo serve`: the parent, granian's worker(s) and the projector."""

    root: int

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    @staticmethod
    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def workers(self) -> list[int]:
        """granian's worker processes: descendants that are neither the root nor the projector."""
        return [p for p in self.pids() if p != self.root and "projections" not in self.cmdline(p)]

    def projector(self) -> int | None:
        return next((p for p in self.pids() if "projections run" in self.cmdline(p)), None)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Sampler:
    """Samples the worker's RSS and fds (and a caller's gauge) every `interval` seconds."""

    tree: ProcessTree
    gauge: Callable[[], int] = lambda: 0
    data_dir: Path | None = None  # given: also sample the projector's lag (events behind the store)
    interval: float = 1.0
    rss: list[float] = field(default_factory=list)
    lag: list[int] = field(default_factory=list)
    projector_rss: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    gauges: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.monotonic() of each sample
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def gauges_between(self, start: float, end: float) -> list[int]:
        return [g for g, t in zip(self.gauges, self.times, strict=False) if start <= t <= end]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            workers = self.tree.workers()
            self.rss.append(sum(rss_mb(p) for p in workers))
            self.fds.append(sum(open_fds(p) for p in workers))
            projector = self.tree.projector()
            self.projector_rss.append(rss_mb(projector) if projector else 0.0)
            self.gauges.append(self.gauge())
            self.times.append(time.monotonic())
            if self.data_dir is not None:
                self.lag.append(projector_lag(self.data_dir))


def projector_lag(data_dir: Path) -> int:
    """Notifications in the event store the projector has not applied yet (-1 if unreadable)."""
    try:
        with closing(_read_only(data_dir / "events.db")) as events:
            head = events.execute("SELECT max(rowid) FROM stored_events").fetchone()[0] or 0
        with closing(_read_only(data_dir / "read_models.db")) as reads:
            row = reads.execute("SELECT position FROM projection_tracking").fetchone()
    except sqlite3.Error:
        return -1
    return head - (row[0] if row else 0)


class Prober:
    """`tests.reliability.prober` in its own process, so client load cannot skew its clock."""

    def __init__(self, server: BmoServer, seconds: float, out: Path, interval: float = 0.2) -> None:
        self.out = out
        cmd = [
            sys.executable,
            "-m",
            "tests.reliability.prober",
            "--base-url",
            server.base_url,
            "--seconds",
            str(seconds),
            "--interval",
            str(interval),
            "--out",
            str(out),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PROBER_TOKEN": server.token or ""}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        finally:
            self.stop()
        return json.loads(self.out.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def percentile(values: Iterable[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# ------------------------------------------------------------------- ledger


def api(server: BmoServer, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=server.headers, timeout=timeout)


def all_runs(server: BmoServer, route: str = "chat_completions") -> list[dict[str, Any]]:
    """Every ledger row of a route, through the paged runs API."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    with api(server) as h:
        for _ in range(10_000):
            params: dict[str, Any] = {"route": route, "limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = h.get("/v1/openai-compat/runs", params=params)
            page.raise_for_status()
            body = page.json()
            rows.extend(body["data"])
            cursor = body["next_cursor"]
            if not cursor:
                break
    return rows


def timeline(server: BmoServer, request_id: str) -> list[dict[str, Any]]:
    with api(server) as h:
        response = h.get(f"/v1/openai-compat/runs/{request_id}/events")
        response.raise_for_status()
        return response.json()["data"]


def terminal_counts(events_db: Path) -> dict[str, int]:
    """Per run stream in the *event store*: how many `Finished` events it holds."""
    with closing(_read_only(events_db)) as conn:
        rows = conn.execute(
            "SELECT originator_id, SUM(topic = 'app.events.run:Finished') FROM stored_events "
            "WHERE originator_id IN "
            "(SELECT originator_id FROM stored_events WHERE topic = 'app.events.run:Fired') "
            "GROUP BY originator_id"
        ).fetchall()
    return {_hex(oid): int(n) for oid, n in rows}


def assert_every_run_terminal_once(events_db: Path, timeout: float = 10) -> int:
    """Every run stream in the store (every route) holds exactly one `Finished`.

    Waits a little: the operator GETs this test just made finish after their response.
    Returns the number of run streams.
    """
    counts: dict[str, int] = {}

    def settled() -> bool:
        counts.clear()
        counts.update(terminal_counts(events_db))
        return set(counts.values()) == {1}

    try:
        wait_until(settled, timeout=timeout, interval=0.2)
    except AssertionError:
        odd = {k: v for k, v in counts.items() if v != 1}
        raise AssertionError(f"{len(odd)} run(s) without exactly one terminal event: {odd}") from None
    return len(counts)


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def _hex(oid: Any) -> str:
    if isinstance(oid, bytes):
        return uuid.UUID(bytes=oid).hex
    return uuid.UUID(str(oid)).hex


def dump_read_models(db: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(db)) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        return {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in tables}


def rebuild_read_models(data_dir: Path) -> str:
    """`bmo projections rebuild` against a stopped server's data dir."""
    env = {**os.environ, "BMO_GLOBAL_DATA": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "app", "projections", "rebuild", "--ledger-capacity", "100000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def check_timeline(events: list[dict[str, Any]], expected: str | None = None) -> None:
    """Fired first, one Finished last, versions 1..n in order, content as streamed."""
    types = [e["type"] for e in events]
    assert types and types[0] == "Fired", types
    assert types.count("Finished") == 1 and types[-1] == "Finished", types
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    if expected is not None:
        text = "".join(
            e["data"]["text"]
            for e in events
            if e["type"] == "ContentAppended" and e["data"].get("role") == "assistant"
        )
        assert text == expected
