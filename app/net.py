"""Addresses: parsing HOST:PORT and telling loopback binds apart."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback_host", "parse_addr", "port_in_use", "resolve_host"]


def parse_addr(addr: str) -> tuple[str, int]:
    """`HOST:PORT` or `[v6]:PORT` -> (host, port); ValueError with a clear message."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must look like HOST:PORT (got {addr!r})")
    return host.strip("[]"), int(port)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses a bind host stands for (IPv4 first); ValueError if it does not resolve.

    granian binds IP addresses only, and loopback must be judged on what a name
    resolves to, not on the name.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"cannot resolve host {host!r} in --addr: {exc}") from None
    addresses: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            address = str(info[4][0]).split("%")[0]
            if info[0] == family and address not in addresses:
                addresses.append(address)
    if not addresses:
        raise ValueError(f"host {host!r} in --addr resolves to no IPv4 or IPv6 address")
    return addresses


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound exclusively, or None if it is free.

    The probe binds without SO_REUSEPORT: a server that shares its port through
    SO_REUSEPORT (granian does) still makes this bind fail, so a second server
    can never silently take half of the first one's traffic.
    """
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
