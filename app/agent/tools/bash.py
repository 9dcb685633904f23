"""`bash`: run one shell command in the workspace, in its own process group.

Every process the command starts is killed when the command returns, times
out, or the run is cancelled: a tool call never leaves work running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.environment import tool_environment
from app.agent.tools.process_guard import MARKER_VAR, GroupRecords, die_with_parent
from app.providers.base import ToolSchema

__all__ = [
    "KILL_GRACE_S",
    "Bash",
    "CappedOutput",
    "GuardedProcess",
    "drain_into",
    "kill_group",
    "reap",
    "spawn_guarded",
]

SHELL = "/bin/bash"
KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL
_POLL_S = 0.02
_READ_CHUNK = 64 * 1024


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    command: str
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class CappedOutput:
    """Bytes of a stream, keeping the head and the tail once over `cap`."""

    def __init__(self, cap: int) -> None:
        self._head_cap = cap // 2
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.omitted = 0

    def feed(self, data: bytes) -> None:
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - self._tail_cap
        if excess > 0:
            self.omitted += excess
            del self._tail[:excess]

    def text(self) -> str:
        tail = bytes(self._tail)
        if not self.omitted:
            return (self._head + tail).decode("utf-8", errors="replace")
        head = self._head.decode("utf-8", errors="replace")
        # Skip UTF-8 continuation bytes the cut left at the start of the tail.
        skip = 0
        while skip < min(3, len(tail)) and tail[skip] & 0xC0 == 0x80:
            skip += 1
        note = f"\n[... {self.omitted} bytes omitted ...]\n"
        return head + note + tail[skip:].decode("utf-8", errors="replace")


async def drain_into(stream: asyncio.StreamReader, out: CappedOutput) -> None:
    """Read `stream` to EOF, so the writer never blocks on a full pipe."""
    while chunk := await stream.read(_READ_CHUNK):
        out.feed(chunk)


class GuardedProcess:
    """A tool process group: the process, its group record, and `close` to drop the record."""

    def __init__(
        self, proc: asyncio.subprocess.Process, records: GroupRecords | None, record: Path | None
    ) -> None:
        self.proc = proc
        self._records = records
        self._record = record

    def close(self) -> None:
        if self._records is not None:
            self._records.remove(self._record)
            self._record = None


async def spawn_guarded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    records: GroupRecords | None,
    cwd: Path | None = None,
    merge_stderr: bool = False,
) -> GuardedProcess:
    """Start `argv` in its own process group with a scrubbed environment, the parent-death
    signal armed and (with `records`) a group record, so it cannot outlive the server."""
    marker = GroupRecords.new_marker()
    creating = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env={**env, MARKER_VAR: marker},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,  # own process group, so the group can be killed
            preexec_fn=die_with_parent(),
        )
    )
    try:
        proc = await asyncio.shield(creating)
    except BaseException:
        await _kill_once_created(creating)
        raise
    record = records.add(marker, proc.pid) if records is not None else None
    return GuardedProcess(proc, records, record)


async def _kill_once_created(creating: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """A call cancelled while its process was being set up: the process may already be
    running (and have started children) before the pipes are connected; asyncio would
    then kill the leader alone. Let the set-up finish and kill the whole group."""
    while not creating.done():  # a further cancel must not cancel the set-up (asyncio's own kill)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(creating)
    if creating.cancelled() or creating.exception() is not None:
        return
    proc = creating.result()
    kill_group(proc.pid, signal.SIGKILL)
    await reap(proc)


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pgid was reused by someone else's group
        return False
    return True


class Bash:
    schema = ToolSchema(
        name="bash",
        description=(
            "Run a command with /bin/bash -c in the workspace directory. stdout and stderr "
            "are merged; stdin is empty. Long output keeps its head and tail. The result "
            "ends with 'exit code N'. Background processes are killed when the command "
            "returns; the command is killed when it exceeds its timeout."
        ),
        parameters={
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell command to run."},
                "timeout_s": {
                    "type": ["number", "null"],
                    "exclusiveMinimum": 0,
                    "description": "Seconds before the command is killed (default 120, max 600).",
                },
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    )
    mutating: bool = True

    def __init__(
        self,
        default_timeout_s: float = 120,
        max_timeout_s: float = 600,
        output_cap: int = 64 * 1024,
        *,
        env: Mapping[str, str] | None = None,
        records: GroupRecords | None = None,
    ) -> None:
        """`env` is the whole environment of the command (default: the scrubbed base of
        this process's); `records` keeps group records for the orphan sweep."""
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
        self._output_cap = output_cap
        self._env = env
        self._records = records

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        timeout = min(parsed.timeout_s or self._default_timeout_s, self._max_timeout_s)
        env = self._env if self._env is not None else tool_environment(os.environ)
        guarded = await _spawn(parsed.command, ctx, env, self._records)
        proc = guarded.proc
        out = CappedOutput(self._output_cap)
        assert proc.stdout is not None
        reader = asyncio.create_task(drain_into(proc.stdout, out))
        try:
            exited = await _wait_exit(proc, timeout)
            await _stop_group(proc, reader)
        except BaseException:
            # Cancelled (or crashed): nothing the command started may outlive the call.
            kill_group(proc.pid, signal.SIGKILL)
            reader.cancel()
            await reap(proc)
            raise
        finally:
            guarded.close()
        return _result(out, proc.returncode, timed_out_after=None if exited else timeout)


def _parse(args: dict[str, Any]) -> _Args:
    try:
        parsed = msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"bash: invalid arguments: {exc}") from None
    if not parsed.command.strip():
        raise ToolError("bash: command is empty")
    if "\x00" in parsed.command:
        raise ToolError("bash: command contains a NUL byte")
    return parsed


async def _spawn(
    command: str, ctx: ToolContext, env: Mapping[str, str], records: GroupRecords | None
) -> GuardedProcess:
    try:
        return await spawn_guarded(
            [SHELL, "-c", command], env=env, records=records, cwd=ctx.workspace, merge_stderr=True
        )
    except OSError as exc:
        raise ToolError(f"bash: cannot start {SHELL}: {exc.strerror or exc}") from None


async def _wait_exit(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """Wait until the shell itself exits; False on timeout.

    Polls `returncode` because on Python 3.11 `Process.wait()` also waits for
    the pipes to close, which a background child holding stdout delays forever.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(_POLL_S, remaining))
    return True


async def _stop_group(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
    """SIGTERM the group, SIGKILL it after the grace period, then finish reading."""
    if kill_group(proc.pid, signal.SIGTERM):
        # The pipe reaching EOF means every process holding it is gone.
        await _wait_done(proc, reader, KILL_GRACE_S)
        kill_group(proc.pid, signal.SIGKILL)
    await _wait_done(proc, reader, 1.0)
    if not reader.done():  # a process that left the group still holds the pipe
        reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await reap(proc)


async def reap(proc: asyncio.subprocess.Process, limit: float = 1.0) -> None:
    """Briefly wait for the process and its pipes to close, so the transport is released.

    Also used while a cancellation unwinds, so nothing here may raise.
    """
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(proc.wait(), limit)


async def _wait_done(proc: asyncio.subprocess.Process, reader: asyncio.Task[None], limit: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while proc.returncode is None or not reader.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(_POLL_S, remaining))


def _result(out: CappedOutput, returncode: int | None, *, timed_out_after: float | None) -> ToolResult:
    lines: list[str] = []
    if timed_out_after is not None:
        lines.append(f"[command timed out and was killed after {timed_out_after:g} s]")
    lines.append(out.text().rstrip("\n") or "(no output)")
    if returncode is not None and returncode < 0:
        lines.append(f"[terminated by signal {_signal_name(-returncode)}]")
    code = _shell_code(returncode)
    lines.append(f"exit code {code}")
    content = "\n".join(lines)
    if timed_out_after is not None:
        return ToolResult(ok=False, content=content, error_kind="timeout")
    return ToolResult(ok=code == 0, content=content)


def _shell_code(returncode: int | None) -> int:
    """The code as a shell reports it: 128 + N for death by signal N."""
    if returncode is None:  # never seen to exit, even after SIGKILL
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
