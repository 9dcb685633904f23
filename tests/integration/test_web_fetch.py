"""web_fetch against a local aiohttp server: conversion, caps, redirects, SSRF guard."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.agent.tools import ToolContext, ToolError, ToolResult, WebFetch
from app.agent.tools import web_fetch as web_fetch_module
from app.agent.tools.web_fetch import MAX_REDIRECTS, html_to_text, is_public_address

PAGE = """<!doctype html>
<html><head><title>Test  Page</title>
<style>body { color: red }</style>
<script>var hidden = "<p>script text</p>";</script></head>
<body>
<h1>Main   Heading</h1>
<p>First paragraph with <a href="/x">a link</a>
   and <b>bold</b> text.</p>
<ul><li>one</li><li>two</li></ul>
<h2>Sub</h2><p>Fish &amp; chips</p>
</body></html>"""

BIG_SIZE = 3 * 1024 * 1024


def _routes() -> list[web.RouteDef]:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def plain(_: web.Request) -> web.Response:
        return web.Response(text="just   text\n  indented\n", content_type="text/plain")

    async def as_json(_: web.Request) -> web.Response:
        return web.Response(text='{"a": [1, 2]}', content_type="application/json")

    async def latin1(_: web.Request) -> web.Response:
        return web.Response(body="café".encode("latin-1"), content_type="text/plain", charset="latin-1")

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * BIG_SIZE, content_type="text/plain")

    async def binary(_: web.Request) -> web.Response:
        return web.Response(body=b"\x00\x01", content_type="application/octet-stream")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404, text="no such page", content_type="text/plain")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def chain(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(text="chain end", content_type="text/plain")
        raise web.HTTPFound(f"/chain/{left - 1}")

    async def redirect_to(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(request.query["to"])

    return [
        web.get("/page", page),
        web.get("/plain", plain),
        web.get("/json", as_json),
        web.get("/latin1", latin1),
        web.get("/big", big),
        web.get("/binary", binary),
        web.get("/missing", missing),
        web.get("/slow", slow),
        web.get("/chain/{n}", chain),
        web.get("/redirect", redirect_to),
    ]


Scenario = Callable[[TestServer], Awaitable[Any]]


def with_server(scenario: Scenario) -> Any:
    async def main() -> Any:
        app = web.Application()
        app.add_routes(_routes())
        async with TestServer(app, host="127.0.0.1") as server:
            return await scenario(server)

    return asyncio.run(main())


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(workspace=tmp_path.resolve())


def fetch(url_path: str, ctx: ToolContext, tool: WebFetch | None = None) -> ToolResult:
    async def scenario(server: TestServer) -> ToolResult:
        fetcher = tool or WebFetch(allow_private=True)
        return await fetcher.run({"url": str(server.make_url(url_path))}, ctx)

    return with_server(scenario)


def test_schema_and_flags() -> None:
    assert WebFetch.schema.name == "web_fetch"
    assert WebFetch().mutating is False


def test_html_is_converted_to_text(ctx: ToolContext) -> None:
    result = fetch("/page", ctx)
    assert result.ok
    body = result.content.split("\n\n", 1)[1]
    assert body == (
        "Title: Test Page\n\n"
        "# Main Heading\n\n"
        "First paragraph with a link and bold text.\n\n"
        "- one\n- two\n\n"
        "## Sub\n\n"
        "Fish & chips"
    )
    assert "Content-Type: text/html" in result.content
    assert "script text" not in result.content and "color" not in result.content


def test_plain_text_and_json_are_returned_as_is(ctx: ToolContext) -> None:
    plain = fetch("/plain", ctx)
    assert plain.ok
    assert plain.content.endswith("\n\njust   text\n  indented\n")
    data = fetch("/json", ctx)
    assert data.ok
    assert data.content.endswith('\n\n{"a": [1, 2]}')


def test_declared_charset_is_used(ctx: ToolContext) -> None:
    assert fetch("/latin1", ctx).content.endswith("café")


def test_big_body_is_truncated(ctx: ToolContext) -> None:
    result = fetch("/big", ctx, WebFetch(max_bytes=100_000, allow_private=True))
    assert result.ok
    assert "[truncated: only the first 100000 bytes were read]" in result.content
    assert result.content.split("\n\n", 1)[1] == "x" * 100_000


def test_text_reaching_the_model_is_capped(ctx: ToolContext) -> None:
    result = fetch("/big", ctx)  # 3 MiB body: 2 MiB read, 100,000 characters shown
    assert result.ok
    assert "[truncated: only the first 2097152 bytes were read]" in result.content
    assert "[truncated: showing the first 100000 of 2097152 characters of text]" in result.content
    assert len(result.content) < 100_500


def test_redirects_are_followed(ctx: ToolContext) -> None:
    result = fetch("/redirect?to=/plain", ctx)
    assert result.ok
    assert "just   text" in result.content
    assert result.content.startswith("URL: http://127.0.0.1:")
    assert result.content.splitlines()[0].endswith("/plain")


def test_redirect_limit(ctx: ToolContext) -> None:
    assert fetch(f"/chain/{MAX_REDIRECTS}", ctx).content.endswith("chain end")
    with pytest.raises(ToolError, match="too many redirects"):
        fetch(f"/chain/{MAX_REDIRECTS + 1}", ctx)


def test_redirect_to_file_scheme_is_refused(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="scheme 'file' refused"):
        fetch("/redirect?to=file:///etc/passwd", ctx)


def test_unsupported_content_type(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match="unsupported content type 'application/octet-stream'"):
        fetch("/binary", ctx)


def test_http_error_status(ctx: ToolContext) -> None:
    result = fetch("/missing", ctx)
    assert not result.ok
    assert "HTTP 404 Not Found" in result.content
    assert "no such page" in result.content


def test_timeout(ctx: ToolContext) -> None:
    result = fetch("/slow", ctx, WebFetch(timeout_s=0.3, allow_private=True))
    assert not result.ok
    assert result.error_kind == "timeout"
    assert "timed out after 0.3 s" in result.content


def test_connection_refused_is_a_tool_error(ctx: ToolContext) -> None:
    async def scenario(server: TestServer) -> None:
        url = str(server.make_url("/plain"))
        await server.close()
        await WebFetch(allow_private=True).run({"url": url}, ctx)

    with pytest.raises(ToolError, match=r"request to .* failed"):
        with_server(scenario)


# --- refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file:///etc/passwd", "scheme 'file' refused"),
        ("ftp://example.com/x", "scheme 'ftp' refused"),
        ("not a url", "scheme 'none' refused"),
        ("http://", "has no host"),
    ],
)
def test_non_http_urls_are_refused(ctx: ToolContext, url: str, match: str) -> None:
    with pytest.raises(ToolError, match=match):
        asyncio.run(WebFetch(allow_private=True).run({"url": url}, ctx))


def test_ssrf_guard_refuses_loopback_literal(ctx: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 is not a public address"):
        fetch("/plain", ctx, WebFetch())


def test_ssrf_guard_refuses_names_resolving_to_loopback(ctx: ToolContext) -> None:
    async def scenario(server: TestServer) -> ToolResult:
        return await WebFetch().run({"url": f"http://localhost:{server.port}/plain"}, ctx)

    with pytest.raises(ToolError, match="localhost resolves to non-public address"):
        with_server(scenario)


@pytest.mark.parametrize(
    "host",
    [
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.1.2.3",
        "0.0.0.0",
        "[64:ff9b::7f00:1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:7f00:1::1]",
        "[::127.0.0.1]",
        "[::ffff:0:7f00:1]",
    ],
)
def test_ssrf_guard_refuses_other_literals(ctx: ToolContext, host: str) -> None:
    with pytest.raises(ToolError, match="is not a public address"):
        asyncio.run(WebFetch().run({"url": f"http://{host}:9/"}, ctx))


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "017700000001", "localhost"]
)
def test_ssrf_guard_refuses_other_spellings_of_loopback(ctx: ToolContext, host: str) -> None:
    """Decimal, hex and octal IPv4 forms are not IP literals to the URL parser; the resolver
    turns them into 127.0.0.1, and the guard checks what the resolver returns."""

    async def scenario(server: TestServer) -> ToolResult:
        return await WebFetch().run({"url": f"http://{host}:{server.port}/plain"}, ctx)

    with pytest.raises(ToolError, match=r"non-public address|not a public address"):
        result = with_server(scenario)
        pytest.fail(f"fetched {host}: {result.content[:200]}")


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://0xa9.254.169.254/",
        "http://0x0a.1:9/",
    ],
)
def test_a_redirect_to_a_private_address_is_refused(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """Every hop is checked. The test server is on loopback, so only 127.0.0.1 is let through
    as if it were public: the first hop; the redirect's target is judged by the real rule."""
    real = web_fetch_module.is_public_address
    monkeypatch.setattr(web_fetch_module, "is_public_address", lambda a: a == "127.0.0.1" or real(a))

    async def scenario(server: TestServer) -> ToolResult:
        return await WebFetch().run({"url": f"http://127.0.0.1:{server.port}/redirect?to={target}"}, ctx)

    with pytest.raises(ToolError, match="not a public address"):
        with_server(scenario)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),  # shared address space, used for cloud metadata
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),
        # IPv6 forms that embed an IPv4 address: the embedded address decides
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 (RFC 8215): never public
        ("::ffff:0:7f00:1", False),  # IPv4-translated (RFC 2765)
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated)
        ("::a00:1", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("::ffff:169.254.169.254", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


# --- HTML conversion details -----------------------------------------------


def test_html_pre_keeps_layout() -> None:
    text = html_to_text("<p>before</p><pre>\n  a  b\n\n    c</pre><p>after</p>")
    assert text == "before\n\n  a  b\n\n    c\n\nafter"


def test_html_breaks_and_unclosed_head() -> None:
    assert html_to_text("<head><title>T</title><body>x<br>y<div>z</div>") == "Title: T\n\nx\ny\nz"


def test_html_drops_noscript_and_nested_list_paragraphs() -> None:
    text = html_to_text("<noscript>enable js</noscript><ol><li><p>item</p></li></ol>")
    assert "enable js" not in text
    assert text.strip() == "- item"
