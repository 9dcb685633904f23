"""The projector's doorbell: a UNIX datagram socket in the data directory.

On SQLite nothing tells a reader that another process committed, so the
projector process used to poll the store every 10 ms (5 % of a core with no
traffic at all). Instead it binds `projector.sock` beside the stores and sleeps
on it; every writer rings it (one tiny datagram, never blocking) after each
commit, and the projector wakes, drains whatever rang meanwhile (many commits,
one step) and projects. A writer with no projector listening, or whose ring
finds the queue full (the projector is awake already), loses nothing: the ring
is a hint, the notification log is the truth, and the projector catches up on
whatever is in the store when it starts.

`sun_path` holds at most 107 bytes: a longer data directory is reached through
`/proc/self/fd/<directory fd>/projector.sock`, which the kernel resolves like
any other path.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from pathlib import Path

__all__ = ["SOCKET_NAME", "Doorbell", "DoorbellListener", "socket_path"]

SOCKET_NAME = "projector.sock"
_SUN_PATH_MAX = 107  # bytes, without the terminating NUL


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


class _Address:
    """A bindable/connectable address for `path`, however long its directory is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dir_fd: int | None = None
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            self.text = str(path)
            return
        self._dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.text = f"/proc/self/fd/{self._dir_fd}/{path.name}"

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


class Doorbell:
    """The writer's side: `ring()` after a commit. Costs one non-blocking `sendto`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sock: socket.socket | None = None
        self._address: _Address | None = None

    def ring(self) -> None:
        try:
            if self._sock is None:
                self._address = _Address(self._path)
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            assert self._address is not None
            self._sock.sendto(b"\x01", self._address.text)
        except OSError:
            # ENOENT / ECONNREFUSED: no projector listens (it catches up when it starts);
            # EAGAIN: its queue is full, so it has rings to wake on already.
            pass

    def answered(self) -> bool:
        """True when a projector is bound to the socket, so a ring now would wake it.

        Before the projector process has started, rings are lost (it catches up on
        the store when it starts), and a reader waiting for it waits for its start-up.
        """
        address = _Address(self._path)
        try:
            return _alive(address.text)
        finally:
            address.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._address is not None:
            self._address.close()
            self._address = None


class DoorbellListener:
    """The projector's side: bound to the socket while it runs, unlinked when it closes.

    A socket left by a projector that died is replaced; one that another live
    projector holds is left alone (`bound` is False): that projector works on the
    same files, and this one falls back to its slow poll.
    """

    def __init__(self, path: Path) -> None:
        self._address = _Address(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self.bound = self._bind()
        self._inode = os.stat(self._address.text).st_ino if self.bound else None

    def _bind(self) -> bool:
        try:
            self._sock.bind(self._address.text)
            return True
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno != 98:  # EADDRINUSE is the only "someone was here" answer
                return False
        if _alive(self._address.text):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._address.text)
        try:
            self._sock.bind(self._address.text)
        except OSError:
            return False
        return True

    def rebind(self) -> bool:
        """Try again to bind (True once bound): the projector that held the socket may have exited.

        A projector started while its predecessor was still finishing its last catch-up
        finds the socket taken; without a retry it would stay deaf to rings (and the
        workers' readiness, which asks whether a projector answers, would never return).
        """
        if not self.bound and self._bind():
            self.bound = True
            self._inode = os.stat(self._address.text).st_ino
        return self.bound

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float | None) -> bool:
        """Sleep until a ring (True) or `timeout` seconds (False); drains every ring queued."""
        if not self.bound:
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return bool(ready) and self.drain()

    def drain(self) -> bool:
        """Swallow every queued ring; True when there was at least one."""
        rang = False
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, OSError):
                return rang
            rang = True

    def close(self) -> None:
        if self.bound:
            with contextlib.suppress(OSError):
                if os.stat(self._address.text).st_ino == self._inode:  # still ours: no successor's
                    os.unlink(self._address.text)
        self._sock.close()
        self._address.close()


def _alive(address: str) -> bool:
    """True when a live socket answers at `address` (a stale one refuses the connection)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(address)
    except OSError:
        return False
    finally:
        probe.close()
    return True
