"""Trusted requester identity (SPEC §13).

Identity headers (oauth2-proxy/Envoy ``X-Auth-Request-*`` and Open WebUI's forwarded
``X-OpenWebUI-User-*``) are honoured only when the peer address is listed in
``BMO_REQUESTER_TRUSTED_PROXIES``; from any other peer they are ignored and reported as
such so the caller can record the fact. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from urllib.parse import unquote

__all__ = [
    "IDENTITY_HEADERS",
    "MAX_GROUPS",
    "MAX_VALUE_CHARS",
    "IdentityResult",
    "Requester",
    "TrustedProxies",
    "identify",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_VALUE_CHARS = 256
MAX_GROUPS = 64

_AUTH_USER = b"x-auth-request-user"
_AUTH_EMAIL = b"x-auth-request-email"
_AUTH_GROUPS = b"x-auth-request-groups"
_OWUI_ID = b"x-openwebui-user-id"
_OWUI_EMAIL = b"x-openwebui-user-email"
_OWUI_NAME = b"x-openwebui-user-name"
_OWUI_ROLE = b"x-openwebui-user-role"

IDENTITY_HEADERS: tuple[bytes, ...] = (
    _AUTH_USER,
    _AUTH_EMAIL,
    _AUTH_GROUPS,
    _OWUI_ID,
    _OWUI_EMAIL,
    _OWUI_NAME,
    _OWUI_ROLE,
)


# --------------------------------------------------------------------------- proxies


def _parse_network(entry: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid BMO_REQUESTER_TRUSTED_PROXIES entry {entry!r}: {exc}") from None


def _parse_peer(peer: str | None) -> IPAddress | None:
    if not peer:
        return None
    try:
        return ipaddress.ip_address(peer.strip())
    except ValueError:
        return None


def _peer_forms(address: IPAddress) -> Iterator[IPAddress]:
    """The address plus its IPv4 <-> IPv4-mapped-IPv6 counterpart."""
    yield address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            yield address.ipv4_mapped
    else:
        yield ipaddress.IPv6Address(f"::ffff:{address}")


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Peers allowed to assert requester identity."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> TrustedProxies:
        """Parse comma-separated IPs/CIDRs; empty entries are skipped, bad ones raise ValueError."""
        if not value:
            return cls()
        entries = (part.strip() for part in value.split(","))
        return cls(tuple(_parse_network(entry) for entry in entries if entry))

    def trusts(self, peer: str | None) -> bool:
        address = _parse_peer(peer)
        if address is None:
            return False
        return any(form in net for form in _peer_forms(address) for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)


# --------------------------------------------------------------------------- requester


@dataclass(frozen=True, slots=True)
class Requester:
    user: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    openwebui_id: str = ""
    name: str = ""
    role: str = ""

    def label(self) -> str:
        """Compact stable JSON of the non-empty fields (sorted keys), or "" when empty."""
        fields = {key: value for key, value in asdict(self).items() if value}
        if not fields:
            return ""
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def __bool__(self) -> bool:
        return any((self.user, self.email, self.groups, self.openwebui_id, self.name, self.role))


@dataclass(frozen=True, slots=True)
class IdentityResult:
    requester: Requester | None
    ignored: tuple[str, ...] = ()


def _clean(text: str) -> str:
    """Drop control characters, strip, cap length."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    return kept.strip()[:MAX_VALUE_CHARS].strip()


def _split_groups(text: str) -> tuple[str, ...]:
    groups = (_clean(part) for part in text.split(","))
    return tuple(group for group in groups if group)[:MAX_GROUPS]


def _lowered(headers: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    wanted = set(IDENTITY_HEADERS)
    return {key.lower(): value for key, value in headers.items() if key.lower() in wanted}


def _present(found: Mapping[bytes, bytes]) -> tuple[bytes, ...]:
    return tuple(name for name in IDENTITY_HEADERS if name in found)


def _text(found: Mapping[bytes, bytes], name: bytes) -> str:
    raw = found.get(name, b"").decode("latin-1")
    if name == _OWUI_NAME:
        raw = unquote(raw, encoding="utf-8", errors="replace")
    return _clean(raw)


def _requester(found: Mapping[bytes, bytes]) -> Requester:
    return Requester(
        user=_text(found, _AUTH_USER),
        email=_text(found, _AUTH_EMAIL) or _text(found, _OWUI_EMAIL),
        groups=_split_groups(found.get(_AUTH_GROUPS, b"").decode("latin-1")),
        openwebui_id=_text(found, _OWUI_ID),
        name=_text(found, _OWUI_NAME),
        role=_text(found, _OWUI_ROLE),
    )


def _names(raw: Iterable[bytes]) -> tuple[str, ...]:
    return tuple(name.decode("ascii") for name in raw)


def identify(headers: Mapping[bytes, bytes], peer: str | None, proxies: TrustedProxies) -> IdentityResult:
    """Resolve the requester from identity headers, honouring them only from trusted peers.

    Header names are matched case-insensitively. From an untrusted peer the requester is
    None and ``ignored`` lists the (lower-case) identity headers that were present. From a
    trusted peer whose headers are all empty after cleaning, the requester is None too.
    """
    found = _lowered(headers)
    present = _present(found)
    if not present:
        return IdentityResult(None, ())
    if not proxies.trusts(peer):
        return IdentityResult(None, _names(present))
    requester = _requester(found)
    return IdentityResult(requester if requester else None, ())
