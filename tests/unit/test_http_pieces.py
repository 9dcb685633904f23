"""Pure HTTP helpers: token check, route names, outcomes, bind rules."""

from __future__ import annotations

import msgspec
import pytest

from app.agent.lifecycle import truncate_utf8
from app.cli.serve import decide_bind
from app.config import Settings
from app.http.asgi import TokenCheck
from app.http.errors import outcome_for_status
from app.http.routes import route_name
from app.net import is_loopback_host, parse_addr


def test_token_check() -> None:
    check = TokenCheck("s3cret")
    assert check.required
    assert check.allows(b"Bearer s3cret") and check.allows(b"bearer s3cret")
    for bad in (None, b"", b"Bearer", b"Bearer s3cre", b"Bearer s3cret2", b"Basic s3cret", b"s3cret"):
        assert not check.allows(bad)
    assert TokenCheck(None).allows(None) and not TokenCheck(None).required


def test_route_names() -> None:
    assert route_name("/v1/chat/completions") == "chat_completions"
    assert route_name("/v1/models") == "models_list"
    assert route_name("/v1/openai-compat/posture") == "posture"
    assert route_name("/v1/openai-compat/runs") == "runs_list"
    assert route_name("/v1/openai-compat/runs/abc/events") == "run_events_list"
    assert route_name("/v1/permissions/x") == "permissions"
    assert route_name("/review/abc") == "permission_review"
    assert route_name("/healthz") is None and route_name("/schema/openapi.json") is None
    assert route_name("/v1//models") == "models_list"  # served by the router, so named alike
    assert route_name("/v1/nope") == "unmatched"


def test_outcome_for_status() -> None:
    assert outcome_for_status(200) == "final_answer"
    assert outcome_for_status(401) == "auth_failed"
    assert outcome_for_status(404) == "invalid_request"
    assert outcome_for_status(413) == "invalid_request"
    assert outcome_for_status(502) == "error_500"


def test_user_agent_truncates_on_a_character_boundary() -> None:
    assert truncate_utf8("a" * 100, 64) == "a" * 64
    assert truncate_utf8("é" * 40, 64) == "é" * 32


def test_addresses() -> None:
    assert parse_addr("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("nohost", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_addr(bad)
    assert is_loopback_host("127.0.0.5") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.com")


def test_bind_rules() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match=r"--auth-token.*--allow-no-auth"):
        decide_bind(settings, addr=None, token=None, allow_no_auth=False, env={})
    with pytest.raises(ValueError, match="non-loopback"):
        decide_bind(settings, addr="0.0.0.0:9", token=None, allow_no_auth=True, env={})
    public = decide_bind(settings, addr="0.0.0.0:9", token="t", allow_no_auth=False, env={})
    assert public.warnings and "non-loopback" in public.warnings[0]
    assert (
        decide_bind(settings, addr=None, token=None, allow_no_auth=False, env={"BMO_AUTH_TOKEN": "e"}).token
        == "e"
    )
    assert (
        decide_bind(settings, addr=None, token="flag", allow_no_auth=False, env={"BMO_AUTH_TOKEN": "e"}).token
        == "flag"
    )


def _wrapped_decode_failure(parser_text: str) -> Exception:
    """Litestar's chain for an undecodable body: ClientException <- SerializationException <- DecodeError."""
    from litestar.exceptions import ClientException, SerializationException

    try:
        try:
            try:
                raise msgspec.DecodeError(parser_text)
            except msgspec.DecodeError as e:
                raise SerializationException(str(e)) from e
        except SerializationException as e:
            raise ClientException(str(e)) from e
    except ClientException as e:
        return e


def test_invalid_utf8_is_named_by_the_bytes_not_the_parsers_wording() -> None:
    from app.http.errors import to_bmo_error

    for parser_text in ("Invalid UTF-8 encoded string", "some future wording", ""):
        error = to_bmo_error(_wrapped_decode_failure(parser_text), b'{"a": "hi\xff\xfe"}')
        assert (error.status, error.code) == (400, "invalid_json")
        assert "not valid UTF-8" in error.message
        syntax = to_bmo_error(_wrapped_decode_failure(parser_text), b'{"a": ')
        assert (syntax.status, syntax.code) == (400, "invalid_json")
        assert syntax.message.startswith("Could not parse the request body as JSON")
    raw = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    assert "not valid UTF-8" in to_bmo_error(raw).message


def test_bind_keeps_only_the_digest_of_the_token() -> None:
    import hashlib

    settings = Settings()
    digest = hashlib.sha256(b"flag").hexdigest()
    assert decide_bind(settings, addr=None, token="flag", allow_no_auth=False, env={}).digest == digest
    # handed over (or given by the operator) as a digest: no plaintext anywhere
    handed = decide_bind(
        settings, addr=None, token=None, allow_no_auth=False, env={"BMO_AUTH_TOKEN_SHA256": digest}
    )
    assert handed.token is None and handed.digest == digest and handed.auth
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        decide_bind(
            settings, addr=None, token=None, allow_no_auth=False, env={"BMO_AUTH_TOKEN_SHA256": "xyz"}
        )
    check = TokenCheck.from_digest(digest)
    assert check.allows(b"Bearer flag") and not check.allows(b"Bearer flags") and check.required
