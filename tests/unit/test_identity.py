"""Trusted requester identity (SPEC §13)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from app.http.identity import (
    IDENTITY_HEADERS,
    MAX_VALUE_CHARS,
    IdentityResult,
    Requester,
    TrustedProxies,
    identify,
)

TRUSTED = TrustedProxies.parse("10.0.0.0/8, 127.0.0.1")

# --------------------------------------------------------------------------- TrustedProxies


@pytest.mark.parametrize(
    ("spec", "peer", "expected"),
    [
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("192.168.1.5", "192.168.1.5", True),
        ("192.168.1.5", "192.168.1.6", False),
        ("10.0.0.1/8", "10.9.9.9", True),  # host bits tolerated
        ("::1", "::1", True),
        ("fd00::/8", "fd12:3456::1", True),
        ("fd00::/8", "fe80::1", False),
        ("10.0.0.1", "::ffff:10.0.0.1", True),  # IPv4-mapped peer matches IPv4 entry
        ("10.0.0.0/8", "::ffff:10.2.3.4", True),
        ("::ffff:10.0.0.1", "10.0.0.1", True),  # mapped entry matches IPv4 peer
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1", True),
        ("127.0.0.1", "::1", False),
    ],
)
def test_trusts(spec: str, peer: str, expected: bool) -> None:
    assert TrustedProxies.parse(spec).trusts(peer) is expected


def test_parse_tolerates_whitespace_and_empty_entries() -> None:
    proxies = TrustedProxies.parse("  10.0.0.1 ,, ,\t::1/128 ,")
    assert len(proxies.networks) == 2
    assert proxies.trusts("10.0.0.1")
    assert proxies.trusts("::1")
    assert proxies


@pytest.mark.parametrize("value", [None, "", "  ", " , ,"])
def test_empty_trusts_nothing(value: str | None) -> None:
    proxies = TrustedProxies.parse(value)
    assert not proxies
    assert not proxies.trusts("127.0.0.1")
    assert not proxies.trusts("::1")


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.0/33", "300.1.1.1", "::zz"])
def test_invalid_entry_named(bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        TrustedProxies.parse(f"10.0.0.1, {bad}")


@pytest.mark.parametrize("peer", [None, "", "garbage", "unix:/tmp/sock", "10.0.0"])
def test_unparsable_peer_untrusted(peer: str | None) -> None:
    assert TRUSTED.trusts(peer) is False


def test_proxies_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TRUSTED.networks = ()  # type: ignore[misc]


# --------------------------------------------------------------------------- identify


def _all_headers() -> dict[bytes, bytes]:
    return {
        b"x-auth-request-user": b"alice",
        b"x-auth-request-email": b"alice@x.io",
        b"x-auth-request-groups": b"admins, devs ,,ops",
        b"x-openwebui-user-id": b"u-123",
        b"x-openwebui-user-email": b"alice@owui.io",
        b"x-openwebui-user-name": b"Alice%20M%C3%BCller",
        b"x-openwebui-user-role": b"admin",
        b"content-type": b"application/json",
    }


def test_trusted_peer_yields_requester() -> None:
    result = identify(_all_headers(), "10.0.0.7", TRUSTED)
    assert result.ignored == ()
    assert result.requester == Requester(
        user="alice",
        email="alice@x.io",
        groups=("admins", "devs", "ops"),
        openwebui_id="u-123",
        name="Alice Müller",
        role="admin",
    )


def test_openwebui_only_headers() -> None:
    headers = {
        b"x-openwebui-user-id": b"u-1",
        b"x-openwebui-user-email": b"bob@owui.io",
        b"x-openwebui-user-name": b"Bob",
        b"x-openwebui-user-role": b"user",
    }
    result = identify(headers, "127.0.0.1", TRUSTED)
    assert result.requester == Requester(email="bob@owui.io", openwebui_id="u-1", name="Bob", role="user")


def test_header_names_case_insensitive() -> None:
    result = identify({b"X-Auth-Request-User": b"carol"}, "10.0.0.1", TRUSTED)
    assert result.requester == Requester(user="carol")


def test_url_quoted_name_decoded_only_for_name() -> None:
    headers = {b"x-openwebui-user-name": b"J%C3%BCrgen%20O%27Neil", b"x-auth-request-user": b"a%20b"}
    requester = identify(headers, "10.0.0.1", TRUSTED).requester
    assert requester is not None
    assert requester.name == "Jürgen O'Neil"
    assert requester.user == "a%20b"


def test_groups_split_and_stripped() -> None:
    headers = {b"x-auth-request-groups": b" a ,b,, c\x01 , "}
    requester = identify(headers, "10.0.0.1", TRUSTED).requester
    assert requester is not None
    assert requester.groups == ("a", "b", "c")


def test_control_characters_stripped() -> None:
    headers = {
        b"x-auth-request-user": b" al\x00ice\x7f\r\n",
        b"x-openwebui-user-name": b"Eve%0A%1B[31mEvil%09",
        b"x-openwebui-user-role": b"\x85admin\x9f",
    }
    requester = identify(headers, "10.0.0.1", TRUSTED).requester
    assert requester == Requester(user="alice", name="Eve[31mEvil", role="admin")


def test_values_length_capped() -> None:
    headers = {b"x-auth-request-user": b"x" * 1000, b"x-auth-request-groups": b"g" * 1000 + b",h"}
    requester = identify(headers, "10.0.0.1", TRUSTED).requester
    assert requester is not None
    assert requester.user == "x" * MAX_VALUE_CHARS
    assert requester.groups == ("g" * MAX_VALUE_CHARS, "h")


def test_trusted_but_all_empty_values_is_no_requester() -> None:
    result = identify({b"x-auth-request-user": b"  \x00 "}, "10.0.0.1", TRUSTED)
    assert result == IdentityResult(None, ())


def test_untrusted_peer_ignores_headers() -> None:
    headers = {
        b"x-auth-request-user": b"mallory",
        b"X-OpenWebUI-User-Role": b"admin",
        b"x-openwebui-user-id": b"",
        b"authorization": b"Bearer nope",
    }
    result = identify(headers, "203.0.113.9", TRUSTED)
    assert result.requester is None
    assert result.ignored == ("x-auth-request-user", "x-openwebui-user-id", "x-openwebui-user-role")


def test_untrusted_peer_all_headers_listed_in_order() -> None:
    result = identify(_all_headers(), "203.0.113.9", TRUSTED)
    assert result.requester is None
    assert result.ignored == tuple(name.decode() for name in IDENTITY_HEADERS)


def test_no_proxies_configured_ignores_everything() -> None:
    result = identify({b"x-auth-request-user": b"alice"}, "127.0.0.1", TrustedProxies.parse(None))
    assert result == IdentityResult(None, ("x-auth-request-user",))


@pytest.mark.parametrize("peer", ["10.0.0.1", "203.0.113.9", None])
def test_no_identity_headers_nothing_ignored(peer: str | None) -> None:
    result = identify({b"content-type": b"application/json"}, peer, TRUSTED)
    assert result == IdentityResult(None, ())


def test_identity_headers_constant() -> None:
    assert all(name == name.lower() for name in IDENTITY_HEADERS)
    assert len(IDENTITY_HEADERS) == 7
    assert b"x-openwebui-user-name" in IDENTITY_HEADERS


# --------------------------------------------------------------------------- label


def test_label_sorted_compact_without_empty_fields() -> None:
    assert Requester(user="alice", email="a@x.io").label() == '{"email":"a@x.io","user":"alice"}'


def test_label_full_and_stable() -> None:
    requester = identify(_all_headers(), "10.0.0.7", TRUSTED).requester
    assert requester is not None
    label = requester.label()
    assert label == requester.label()
    assert " " not in label.replace("Alice Müller", "")
    decoded = json.loads(label)
    assert list(decoded) == sorted(decoded)
    assert decoded["groups"] == ["admins", "devs", "ops"]
    assert decoded["name"] == "Alice Müller"
    assert decoded["openwebui_id"] == "u-123"


def test_label_empty() -> None:
    assert Requester().label() == ""
    assert not Requester()


def test_requester_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Requester().user = "x"  # type: ignore[misc]
