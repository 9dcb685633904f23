"""Tool processes die with the server, even when it is killed with SIGKILL.

Three layers:

- the parent-death signal: a tool's first process gets SIGKILL from the kernel
  when the thread that started it dies (`prctl(PR_SET_PDEATHSIG)`). asyncio
  starts subprocesses from the event-loop thread, which lives as long as the
  worker process, so the signal fires exactly when the worker dies. It is not
  inherited by the process's own children (`bash -c 'sleep 300; echo'` forks
  `sleep`), hence:
- a watchdog per worker (`start_watchdog`): a small process whose own
  parent-death signal is SIGTERM, on which it kills every process carrying one
  of its worker's group markers (below) at once;
- a group record under the data directory: one file per running tool process
  group, naming a random marker that every process of the group carries in its
  environment (`BMO_TOOL_GROUP`), the group leader's pid and start time, and the
  owning server process's pid and start time. `bmo serve` reaps, before it
  starts its workers, every group whose owner is gone: the leader's group if the
  leader is still the same process (same start time, so a reused pid is never
  signalled), and every process that still carries the marker. The record is
  removed when the group ends normally.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MARKER_VAR",
    "GroupRecords",
    "Reaped",
    "die_with_parent",
    "die_with_parent_now",
    "launcher_argv",
    "reap_orphans",
    "start_time",
    "start_watchdog",
    "tool_groups_dir",
]

MARKER_VAR = "BMO_TOOL_GROUP"
_PR_SET_PDEATHSIG = 1
# Sets the parent-death signal, then becomes the real command (the setting survives exec).
_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "ctypes.CDLL(None,use_errno=True).prctl(1,int(signal.SIGKILL),0,0,0)\n"
    "os.execvp(sys.argv[1],sys.argv[1:])\n"
)


def tool_groups_dir(data_dir: Path) -> Path:
    """Where a server keeps the records of its running tool process groups."""
    return data_dir / "tool-groups"


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that sets SIGKILL as the parent-death signal (None off Linux).

    The libc function is looked up here, in the parent, so the child only calls it.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    ppid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != ppid:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def die_with_parent_now() -> None:
    """Arm SIGKILL as this process's own parent-death signal (granian workers: they would
    otherwise outlive a `kill -9` of `bmo serve`, and so would every tool they started)."""
    prctl = _prctl()
    if prctl is None:
        return
    parent = os.getppid()
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died while the signal was being armed
        os._exit(1)


def launcher_argv(command: str, args: list[str]) -> tuple[str, list[str]]:
    """Command and args that run `command` with the parent-death signal armed (for spawns we
    do not control, like the MCP SDK's stdio client)."""
    if _prctl() is None:
        return command, args
    # -I -S: the launcher itself needs only the standard library (the command still gets
    # the whole environment it was given, PYTHONPATH included).
    return sys.executable, ["-I", "-S", "-c", _LAUNCHER, command, *args]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may contain anything: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _alive(pid: int, started: int | None) -> bool:
    """The same process (same start time) still running; a zombie is dead."""
    stat = _stat(pid)
    return started is not None and stat is not None and int(stat[19]) == started and stat[0] != "Z"


def start_watchdog(directory: Path) -> subprocess.Popen[bytes] | None:
    """A small process that reaps this process's tool groups the moment it dies.

    The parent-death signal reaches only a tool's first process; this watchdog gets
    SIGTERM as its own parent-death signal and then kills every process still
    carrying one of our group markers, so `bash -c 'sleep 300 & wait'` dies with the
    server rather than at the next start. The startup sweep stays as the backstop.
    """
    if _prctl() is None:
        return None
    # Run by path, standard library only: a few MB, no import of bmo.
    argv = [sys.executable, "-I", "-S", __file__, str(directory), str(os.getpid())]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def _watch(directory: Path, owner: int) -> None:
    """The watchdog's body: wait for the owner's death, then reap its groups."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == owner:  # not orphaned already: wait for the signal
        signal.sigwait({signal.SIGTERM})
    reap_orphans(directory, owner)


@dataclass(frozen=True, slots=True)
class _Record:
    marker: str
    owner_pid: int
    owner_start: int | None
    leader_pid: int | None = None
    leader_start: int | None = None


class GroupRecords:
    """The record directory of one server process (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._owner = os.getpid()
        self._owner_start = start_time(self._owner)

    @staticmethod
    def new_marker() -> str:
        return secrets.token_hex(16)

    def add(self, marker: str, leader_pid: int | None = None) -> Path | None:
        """Record a running group; None when the directory cannot be written (logged by nobody:
        the parent-death signal still covers the group's first process)."""
        record = _Record(
            marker,
            self._owner,
            self._owner_start,
            leader_pid,
            start_time(leader_pid) if leader_pid else None,
        )
        path = self._dir / f"{marker}.json"
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(json.dumps(_as_dict(record)))
        except OSError:
            return None
        return path

    @staticmethod
    def remove(path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    @contextlib.contextmanager
    def group(self, marker: str, leader_pid: int | None = None) -> Iterator[None]:
        path = self.add(marker, leader_pid)
        try:
            yield
        finally:
            self.remove(path)


def _as_dict(record: _Record) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}


@dataclass(frozen=True, slots=True)
class Reaped:
    marker: str
    pids: tuple[int, ...]
    commands: tuple[str, ...]


def reap_orphans(directory: Path, owner: int | None = None) -> list[Reaped]:
    """Kill the tool processes of servers that are gone (only `owner`'s, if given);
    remove their records."""
    reaped: list[Reaped] = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return reaped
    for path in paths:
        record = _load(path)
        if record is None:
            GroupRecords.remove(path)
            continue
        if (owner is not None and record.owner_pid != owner) or _alive(record.owner_pid, record.owner_start):
            continue  # another server's, or its server is still running
        killed = _kill_group(record)
        if killed:
            reaped.append(Reaped(record.marker, tuple(killed), tuple(killed.values())))
        GroupRecords.remove(path)
    return reaped


def _load(path: Path) -> _Record | None:
    try:
        data = json.loads(path.read_text())
        return _Record(**data)
    except (OSError, ValueError, TypeError):
        return None


def _kill_group(record: _Record) -> dict[int, str]:
    """SIGKILL the group; returns the pids signalled with their commands, read before the kill
    (a killed process's command line is gone at once)."""
    victims: dict[int, str] = {}
    if record.leader_pid and _alive(record.leader_pid, record.leader_start):
        for pid in _pids():
            stat = _stat(pid)
            if stat and int(stat[2]) == record.leader_pid:  # field 5: process group
                victims[pid] = _command(pid)
    needle = f"{MARKER_VAR}={record.marker}".encode()
    for pid in _pids():
        if pid not in victims and _carries(pid, needle):
            victims[pid] = _command(pid)
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return dict(sorted(victims.items()))


def _pids() -> list[int]:
    me = os.getpid()
    return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != me]


def _carries(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


if __name__ == "__main__":
    _watch(Path(sys.argv[1]), int(sys.argv[2]))
