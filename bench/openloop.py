"""Open-loop load and the projection-lag probe (aiohttp, asyncio).

`load`: sends non-streaming chat completions at a fixed rate for a fixed time,
whatever the server does (open loop, unlike wrk). Latency is measured from each
request's *scheduled* send time, so queueing shows up (no coordinated
omission). Requests that would exceed `--max-inflight` are dropped and counted.

`lag`: every `--interval` seconds, one chat completion with the probe model,
then `GET /v1/openai-compat/runs?limit=1&model=<probe>` until that request's
row shows an outcome; the lag is from the end of the response to the row
being visible.

Both print one JSON object on stdout.

    python -m bench.openloop load --port 9200 --model mock-model --rate 500 --duration 3
    python -m bench.openloop lag --port 9200 --token T --model mock/probe-model --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.stats import summarize

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

__all__ = ["main"]


def _body(model: str, stream: bool = False) -> bytes:
    messages = [{"role": "user", "content": "Say hello."}]
    return json.dumps({"model": model, "stream": stream, "messages": messages}).encode()


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@dataclass
class LoadTally:
    latency_ms: list[float] = field(default_factory=list)  # from the scheduled send time
    service_ms: list[float] = field(default_factory=list)  # from the actual send time
    send_lag_ms: list[float] = field(default_factory=list)
    errors: int = 0
    dropped: int = 0
    inflight: int = 0
    last_end: float = 0.0


async def _fire(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    due: float,
    tally: LoadTally,
) -> None:
    sent = time.perf_counter()
    tally.inflight += 1
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            ok = resp.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        ok = False
    finally:
        tally.inflight -= 1
    end = time.perf_counter()
    if not ok:
        tally.errors += 1
        return
    tally.latency_ms.append((end - due) * 1000)
    tally.service_ms.append((end - sent) * 1000)
    tally.send_lag_ms.append((sent - due) * 1000)
    tally.last_end = max(tally.last_end, end)


async def load(args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    body, headers = _body(args.model), _headers(args.token)
    tally = LoadTally()
    connector = aiohttp.TCPConnector(limit=args.max_inflight)
    timeout = aiohttp.ClientTimeout(total=args.duration + args.drain)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        total = int(args.rate * args.duration)
        start = time.perf_counter() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        for i in range(total):
            due = start + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if tally.inflight >= args.max_inflight:
                tally.dropped += 1
                continue
            task = asyncio.create_task(_fire(session, url, body, headers, due, tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
            for task in pending:
                task.cancel()
            tally.errors += len(pending)
    window = max(args.duration, tally.last_end - start) if tally.last_end else args.duration
    return {
        "offered_rps": args.rate,
        "duration_s": args.duration,
        "requests": len(tally.latency_ms),
        "achieved_rps": len(tally.latency_ms) / window,
        "errors": tally.errors,
        "dropped": tally.dropped,
        "latency_ms": summarize(tally.latency_ms),
        "service_ms": summarize(tally.service_ms),
        "send_lag_ms": summarize(tally.send_lag_ms),
    }


async def _probe_once(
    session: aiohttp.ClientSession, base: str, args: argparse.Namespace
) -> tuple[float | None, bool]:
    """(lag in ms or None, timed_out)."""
    async with session.post(
        f"{base}/v1/chat/completions", data=_body(args.model), headers=_headers(args.token)
    ) as resp:
        payload = await resp.read()
        request_id = resp.headers.get("x-request-id") or _id_of(payload)
    answered = time.perf_counter()
    params = {"limit": "1", "model": args.model}
    while time.perf_counter() - answered < args.timeout:
        async with session.get(
            f"{base}/v1/openai-compat/runs", params=params, headers=_headers(args.token)
        ) as resp:
            page = await resp.json()
        seen = time.perf_counter()
        rows = page.get("data") or []
        if rows and rows[0].get("request_id") == request_id and rows[0].get("outcome"):
            return (seen - answered) * 1000, False
        await asyncio.sleep(0.001)
    return None, True


def _id_of(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("id", "")).removeprefix("chatcmpl-")
    except ValueError:
        return ""


async def lag(args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://127.0.0.1:{args.port}"
    lags: list[float] = []
    timeouts = errors = 0
    deadline = time.perf_counter() + args.duration
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                value, timed_out = await _probe_once(session, base, args)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                errors += 1
                value, timed_out = None, False
            timeouts += timed_out
            if value is not None:
                lags.append(value)
            await asyncio.sleep(max(0.0, args.interval - (time.perf_counter() - started)))
    return {"lag_ms": summarize(lags), "timeouts": timeouts, "errors": errors}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("load", "lag"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--port", type=int, required=True)
        cmd.add_argument("--token", default="x")
        cmd.add_argument("--model", default="mock-model")
        cmd.add_argument("--duration", type=float, default=3.0)
    sub.choices["load"].add_argument("--rate", type=float, required=True)
    sub.choices["load"].add_argument("--max-inflight", type=int, default=256)
    sub.choices["load"].add_argument("--drain", type=float, default=5.0)
    sub.choices["lag"].add_argument("--interval", type=float, default=0.05)
    sub.choices["lag"].add_argument("--timeout", type=float, default=2.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    coro = load(args) if args.command == "load" else lag(args)
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
