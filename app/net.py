"""Addresses: parsing HOST:PORT and telling loopback binds apart."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host", "parse_addr"]


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
