"""A raw asyncio HTTP/1.1 keep-alive client that times streamed chat completions.

TTFT: from writing the request to the first body bytes that contain `data:`.
TTLB: to the end of the body (the terminal `0\\r\\n\\r\\n` chunk, or Content-Length).
Each of `--concurrency` connections sends requests back to back for
`--duration` seconds (or exactly one with `--once`, to hold many streams open).
Prints one JSON object on stdout.

    python -m bench.ttft --port 9200 --model mock-model --concurrency 1 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

from bench.stats import summarize

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop ships with bmo on Linux
    uvloop = None  # type: ignore[assignment]

__all__ = ["build_request", "main"]

_CHUNK_END = b"\r\n0\r\n\r\n"


def build_request(port: int, token: str, model: str, *, stream: bool, content: str = "Say hello.") -> bytes:
    body = json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Tally:
    ttft_ms: list[float] = field(default_factory=list)
    ttlb_ms: list[float] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # (first data, end), perf_counter
    errors: int = 0
    status_errors: int = 0


class _Closed(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed from exc
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return status, headers


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, tally: Tally
) -> bool:
    """One request/response; False when the server closed the connection."""
    start = time.perf_counter()
    writer.write(request)
    status, headers = await _read_head(reader)
    length = int(headers["content-length"]) if "content-length" in headers else None
    body = bytearray()
    first: float | None = None
    while True:
        if length is not None and len(body) >= length:
            break
        if length is None and (body.endswith(_CHUNK_END) or body == b"0\r\n\r\n"):
            break
        data = await reader.read(65536)
        if not data:
            raise _Closed
        body += data
        if first is None and b"data:" in body:
            first = time.perf_counter()
    end = time.perf_counter()
    if status != 200:
        tally.status_errors += 1
    elif first is None:
        tally.errors += 1
    else:
        tally.ttft_ms.append((first - start) * 1000)
        tally.ttlb_ms.append((end - start) * 1000)
        tally.spans.append((first, end))
    return headers.get("connection", "").lower() != "close"


async def _worker(port: int, request: bytes, deadline: float, once: bool, tally: Tally) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while once or time.perf_counter() < deadline:  # --once: exactly one request, however late
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            keep = await _one(reader, writer, request, tally)
        except (OSError, _Closed, asyncio.IncompleteReadError, ValueError):
            tally.errors += 1
            keep = False
            await asyncio.sleep(0.01)
        if not keep and writer is not None:
            writer.close()
            writer = None
        if once:
            break
    if writer is not None:
        writer.close()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """How many streams were open (first data seen, not yet ended) at the same moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


async def run(args: argparse.Namespace) -> dict[str, object]:
    request = build_request(args.port, args.token, args.model, stream=True, content=args.content)
    tally = Tally()
    started = time.perf_counter()
    deadline = started + args.duration
    tasks = []
    for i in range(args.concurrency):
        tasks.append(asyncio.create_task(_worker(args.port, request, deadline, args.once, tally)))
        if args.ramp_s > 0:
            await asyncio.sleep(args.ramp_s / args.concurrency)
        elif i % 64 == 63:
            await asyncio.sleep(0)
    _, pending = await asyncio.wait(tasks, timeout=args.duration + args.grace)
    for task in pending:  # each holds at most one request that never finished
        task.cancel()
    elapsed = time.perf_counter() - started
    return {
        "requests": len(tally.ttft_ms),
        "elapsed_s": elapsed,
        "errors": tally.errors + len(pending),
        "unfinished": len(pending),
        "status_errors": tally.status_errors,
        "ttft_ms": summarize(tally.ttft_ms),
        "ttlb_ms": summarize(tally.ttlb_ms),
        "max_open": max_overlap(tally.spans),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="x")
    parser.add_argument("--model", default="mock-model")
    parser.add_argument("--content", default="Say hello.")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--once", action="store_true", help="one request per connection")
    parser.add_argument("--ramp-s", type=float, default=0.0, help="spread connection starts over this")
    parser.add_argument("--grace", type=float, default=10.0, help="extra seconds for the last responses")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    result = uvloop.run(run(args)) if uvloop is not None else asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
