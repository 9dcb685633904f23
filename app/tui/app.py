"""Wiring: the urwid MainLoop, the worker threads and the periodic refresh.

Concurrency model: urwid's default select loop owns the UI thread and only
draws and dispatches keys. Every HTTP call (including the streamed chat
answer and the follow of a run's events) runs on its own daemon thread with
a blocking httpx client; results come back with `MainLoop.call_from_thread`
(urwid 5: thread-safe, wakes the loop through a self-pipe), and the widgets
are changed only inside those callbacks. A thread-and-queue design keeps the
controller testable without an event loop (tests drain the queue themselves),
where an asyncio design would need one in every test. Daemon threads never
hold up exit: quitting mid-stream just drops the connection, which the server
records as a cancelled run.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable
from typing import Any

import urwid

from app.tui.client import BmoClient
from app.tui.controller import Controller
from app.tui.widgets import PALETTE, TuiScreen

__all__ = ["REFRESH_S", "build", "new_session_id", "run_tui"]

REFRESH_S = 10.0  # posture poll (each is a ledger row); questions arrive by the live watch


def new_session_id() -> str:
    return f"tui-{secrets.token_hex(6)}"


def spawn_daemon(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="bmo-tui-worker", daemon=True).start()


def build(
    client: BmoClient,
    *,
    post: Callable[[Callable[[], None]], None],
    spawn: Callable[[Callable[[], None]], None],
    on_quit: Callable[[], None],
    watch: bool = False,
) -> tuple[TuiScreen, Controller]:
    """The screen and its controller, wired to each other (no event loop needed).

    `watch` follows the pending questions live (the app always does; widget
    tests with an inline spawn must not, a watch never returns).
    """
    holder: dict[str, Controller] = {}
    screen = TuiScreen(
        on_submit=lambda text: holder["c"].submit(text),
        on_escape=lambda: holder["c"].escape(),
        on_quit=on_quit,
    )
    controller = Controller(client, screen, post=post, spawn=spawn, watch=watch)
    holder["c"] = controller
    return screen, controller


def _exit_loop() -> None:
    raise urwid.ExitMainLoop()


def run_tui(client: BmoClient, *, refresh_s: float = REFRESH_S) -> int:
    """Run until /quit (or Ctrl-C); returns the exit status."""
    loop_ref: dict[str, urwid.MainLoop] = {}

    def post(callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError, KeyError):  # the loop already stopped
            loop_ref["loop"].call_from_thread(callback)

    screen, controller = build(client, post=post, spawn=spawn_daemon, on_quit=_exit_loop, watch=True)
    loop = urwid.MainLoop(screen, PALETTE, handle_mouse=False)
    loop_ref["loop"] = loop

    def tick(_loop: urwid.MainLoop, _data: Any = None) -> None:
        controller.refresh()
        _loop.set_alarm_in(refresh_s, tick)

    loop.set_alarm_in(0, lambda _l, _d: controller.start())
    loop.set_alarm_in(refresh_s, tick)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits like /quit
            loop.run()
    finally:
        controller.close()
    return 0
