"""An idle `bmo serve` costs nothing, and the projector still keeps up: it wakes on work.

The process tree (granian's main process, its worker, the worker's tool watchdog
and `bmo projections run`) is read from /proc: CPU time from each thread's
`schedstat` (nanoseconds), wake-ups from its voluntary context switches. A timer
shows up as wake-ups even when each one is cheap; a 10 ms poll is 100 a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from app.projections.doorbell import Doorbell, socket_path
from tests.e2e.server import BmoServer
from tests.e2e.test_sessions import config, content_of, post, runs
from tests.fakes.openai_upstream import FakeOpenAI, Text

MAX_CORE_SHARE = 0.001  # 0.1 % of one core
MAX_WAKEUPS_S = 5.0  # the whole tree; the projector's 1 s fallback poll is one of them


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def _usage(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, voluntary context switches) summed over every thread of `pids`."""
    cpu_ns = switches = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                cpu_ns += int((task / "schedstat").read_text().split()[0])
                status = (task / "status").read_text()
            except OSError:
                continue
            switches += next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt")
            )
    return cpu_ns / 1e9, switches


def _names(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
    return out


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def _finished(server: BmoServer) -> set[str]:
    return {r["request_id"] for r in runs(server) if r["outcome"]}


def test_idle_server_tree_uses_under_a_thousandth_of_a_core(
    make_server: Callable[..., BmoServer], tmp_path: Path
) -> None:
    with FakeOpenAI(models=("fake-model", "other-model")) as upstream:
        upstream.script(*[Text("warm")] * 3)
        server = make_server(config_text=config(upstream))
        assert server.proc is not None
        ids = set()
        for i in range(3):  # every lazy part is warm: provider pool, records flusher, projector
            response = post(server, f"warm-up {i}")
            assert content_of(response) == "warm"
            ids.add(response.headers["x-request-id"])
        _wait_until(lambda: ids <= _finished(server), "the projector caught up")
        pids = _tree(server.proc.pid)
        assert any("projections run" in name for name in _names(pids)), _names(pids)
        window, results = 5.0, []
        for _ in range(4):  # a quiet window is the condition; one of four must be quiet
            cpu0, wakes0 = _usage(pids)
            started = time.monotonic()
            time.sleep(window)  # the measurement window itself, not a synchronisation
            cpu1, wakes1 = _usage(pids)
            elapsed = time.monotonic() - started
            share, wakeups = (cpu1 - cpu0) / elapsed, (wakes1 - wakes0) / elapsed
            results.append((round(share * 100, 4), round(wakeups, 1)))
            if share < MAX_CORE_SHARE and wakeups < MAX_WAKEUPS_S:
                return
        raise AssertionError(f"idle tree {_names(pids)}: (% of a core, wake-ups/s) per window {results}")


def test_projection_keeps_up_without_polling(make_server: Callable[..., BmoServer]) -> None:
    """With the projector's fallback poll at ten minutes, every run is in the ledger at once."""
    count = 8
    with FakeOpenAI(models=("fake-model", "other-model")) as upstream:
        upstream.script(*[Text(f"answer {i}") for i in range(count)])
        server = make_server(config_text=config(upstream), extra_env={"BMO_PROJECTOR_POLL_MS": str(600_000)})
        first = post(server, "before")
        assert content_of(first) == "answer 0"
        # the projector process starts beside the workers (slowly on a loaded machine): once up, it
        # binds its doorbell and catches up on what was written before
        _wait_until(lambda: first.headers["x-request-id"] in _finished(server), "the projector started")
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
            for i in range(1, count):
                response = post(server, f"question {i}")
                assert content_of(response) == f"answer {i}"
                # the ledger waits (at most 2 s) for the projector to pass this worker's writes: a missed
                # wake-up leaves the run out (the next poll is ten minutes away)
                rows = http.get("/v1/openai-compat/runs", params={"limit": 100}).json()["data"]
                mine = [r for r in rows if r["request_id"] == response.headers["x-request-id"]]
                assert mine and mine[0]["outcome"] == "final_answer", (i, rows)


def test_ready_means_the_projector_hears_the_first_write(make_server: Callable[..., BmoServer]) -> None:
    """`/readyz` answers 200 only once the projector process is up, so the first run is read at once.

    The projector starts beside the workers; a worker that was ready before it lost its
    first commits' rings, and the first operator reads waited for the projector's start-up
    (0.2-0.75 s under load).
    """
    with FakeOpenAI(models=("fake-model", "other-model")) as upstream:
        upstream.script(Text("first"))
        server = make_server(config_text=config(upstream), extra_env={"BMO_PROJECTOR_POLL_MS": str(600_000)})
        # ready: the projector is bound to its doorbell already (a ring now wakes it)
        assert Doorbell(socket_path(server.data_dir)).answered()
        response = post(server, "the first question")
        assert content_of(response) == "first"
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http:
            rows = http.get("/v1/openai-compat/runs", params={"route": "chat_completions"}).json()["data"]
            posture = http.get("/v1/openai-compat/posture").json()
        assert [(r["request_id"], r["outcome"]) for r in rows] == [
            (response.headers["x-request-id"], "final_answer")
        ]
        assert posture["routes"]["chat_completions"] == 1
        assert [o["request_id"] for o in posture["recent_outcomes"]] == [response.headers["x-request-id"]]


def test_not_ready_while_the_projector_process_is_gone(make_server: Callable[..., BmoServer]) -> None:
    server = make_server()
    assert server.proc is not None
    assert httpx.get(server.base_url + "/readyz").status_code == 200
    projector = [p for p in _tree(server.proc.pid) if "projections run" in " ".join(_names([p]))]
    assert len(projector) == 1, _names(_tree(server.proc.pid))
    os.kill(projector[0], signal.SIGKILL)  # this test's own server's projector
    _wait_until(lambda: not Path(f"/proc/{projector[0]}/cmdline").exists() or _zombie(projector[0]), "gone")
    response = httpx.get(server.base_url + "/readyz", timeout=10)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "projector_starting"


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"
