"""The projector's doorbell: rings wake the listener, whatever the path length; a ring never fails."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from app.projections.doorbell import Doorbell, DoorbellListener, socket_path


def _deep(tmp_path: Path) -> Path:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # beyond sun_path's 107 bytes
    deep.mkdir(parents=True)
    return deep


def test_rings_wake_the_listener_and_coalesce(tmp_path: Path) -> None:
    for directory in (tmp_path, _deep(tmp_path)):
        listener = DoorbellListener(socket_path(directory))
        bell = Doorbell(socket_path(directory))
        try:
            assert listener.bound
            assert listener.wait(0) is False  # nothing rang yet
            for _ in range(50):
                bell.ring()
            assert listener.wait(5.0) is True
            assert listener.wait(0) is False  # the fifty rings were drained as one wake-up
        finally:
            bell.close()
            listener.close()
        assert not socket_path(directory).exists()  # unlinked on close


def test_a_ring_with_nobody_listening_is_silent(tmp_path: Path) -> None:
    bell = Doorbell(socket_path(tmp_path))
    bell.ring()  # no socket file
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(socket_path(tmp_path)))
    stale.close()  # a socket file nobody reads: a projector that died
    bell.ring()
    listener = DoorbellListener(socket_path(tmp_path))  # replaces the stale one
    try:
        assert listener.bound
        bell.ring()
        assert listener.wait(5.0) is True
    finally:
        bell.close()
        listener.close()


def test_a_live_projector_keeps_its_socket(tmp_path: Path) -> None:
    first = DoorbellListener(socket_path(tmp_path))
    second = DoorbellListener(socket_path(tmp_path))
    bell = Doorbell(socket_path(tmp_path))
    try:
        assert first.bound and not second.bound
        second.close()  # must not unlink the first one's socket
        bell.ring()
        assert first.wait(5.0) is True
    finally:
        bell.close()
        first.close()


def test_answered_only_while_a_projector_is_bound(tmp_path: Path) -> None:
    """What readiness asks: would a ring now wake a projector? (whatever the path length)"""
    for directory in (tmp_path, _deep(tmp_path)):
        bell = Doorbell(socket_path(directory))
        assert bell.answered() is False  # no socket file: the projector has not started
        listener = DoorbellListener(socket_path(directory))
        try:
            assert listener.bound and bell.answered() is True
        finally:
            listener.close()
        assert bell.answered() is False  # it exited
        bell.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(socket_path(tmp_path)))
    stale.close()  # a socket file nobody reads: a projector that died
    assert Doorbell(socket_path(tmp_path)).answered() is False


def test_a_projector_that_found_the_socket_taken_binds_once_it_is_free(tmp_path: Path) -> None:
    """A projector started while its predecessor finished its last catch-up must not stay
    deaf to rings for good (readiness asks whether a projector answers)."""
    first = DoorbellListener(socket_path(tmp_path))
    second = DoorbellListener(socket_path(tmp_path))
    bell = Doorbell(socket_path(tmp_path))
    try:
        assert first.bound and not second.bound
        assert second.rebind() is False  # still held by a live projector
        first.close()  # the predecessor exits and unlinks its socket
        assert bell.answered() is False
        assert second.rebind() is True and bell.answered() is True
        bell.ring()
        assert second.wait(5.0) is True
    finally:
        bell.close()
        first.close()
        second.close()


def test_a_listener_that_cannot_bind_is_unbound_and_its_wait_says_no_ring(tmp_path: Path) -> None:
    """Its directory is gone (not EADDRINUSE): no exception, not bound, and `wait` never claims a ring
    (the projector then falls back to its slow poll)."""
    listener = DoorbellListener(socket_path(tmp_path / "gone"))
    try:
        assert listener.bound is False
        assert listener.wait(0) is False
    finally:
        listener.close()


def test_the_socket_is_bound_at_its_path_and_closing_after_it_was_removed_is_quiet(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    listener = DoorbellListener(path)
    assert listener.bound and stat.S_ISSOCK(path.stat().st_mode)  # there, not elsewhere
    path.unlink()  # someone cleaned the data directory meanwhile
    listener.close()  # nothing left to unlink: no error
