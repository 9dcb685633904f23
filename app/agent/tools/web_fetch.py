"""`web_fetch`: GET one http(s) URL and return it as readable text.

By default only public addresses are reachable (an SSRF guard): IP literals
are checked before connecting, and host names are checked by the resolver the
connection actually uses, so a DNS answer cannot switch to a private address
between check and connect. Redirects are followed by hand so every hop is
checked the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.providers.base import ToolSchema

__all__ = ["MAX_REDIRECTS", "WebFetch", "html_to_text", "is_public_address"]

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_ERROR_BODY_CHARS = 2000
_USER_AGENT = "bmo-web-fetch/0.1"


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    url: str


@dataclass(frozen=True, slots=True)
class _Page:
    url: str
    status: int
    reason: str
    content_type: str
    charset: str | None
    body: bytes
    truncated: bool


class WebFetch:
    schema = ToolSchema(
        name="web_fetch",
        description=(
            "Fetch an http(s) URL with GET and return its text: HTML is converted to "
            "readable text, plain text and JSON are returned as-is. Follows up to 5 "
            "redirects; large bodies are truncated."
        ),
        parameters={
            "type": "object",
            "properties": {"url": {"type": "string", "description": "An http:// or https:// URL."}},
            "required": ["url"],
            "additionalProperties": False,
        },
    )
    mutating: bool = False

    def __init__(
        self,
        max_bytes: int = 2 * 1024 * 1024,
        timeout_s: float = 20,
        allow_private: bool = False,
        max_chars: int = 100_000,
    ) -> None:
        """`max_bytes` of body are read; at most `max_chars` of text reach the model."""
        self._max_chars = max_chars
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._allow_private = allow_private

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        url = _check_url(_parse(args).url)
        try:
            async with asyncio.timeout(self._timeout_s):
                page = await self._fetch(url)
        except TimeoutError:
            return ToolResult(
                ok=False,
                content=f"error: web_fetch: {url} timed out after {self._timeout_s:g} s",
                error_kind="timeout",
            )
        except aiohttp.ClientError as exc:
            raise ToolError(_describe_client_error(url, exc)) from None
        # Converting up to max_bytes of HTML is CPU work: off the event loop.
        return await asyncio.to_thread(_render, page, self._max_chars)

    async def _fetch(self, url: str) -> _Page:
        resolver = None if self._allow_private else _PublicOnlyResolver()
        connector = aiohttp.TCPConnector(resolver=resolver)
        headers = {"User-Agent": _USER_AGENT, "Accept": "text/html, text/plain, application/json, */*;q=0.1"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            for _ in range(MAX_REDIRECTS + 1):
                if not self._allow_private:
                    _check_ip_literal(url)
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status not in _REDIRECT_STATUSES:
                        return await self._read(url, resp)
                    url = _redirect_target(url, resp)
        raise ToolError(f"web_fetch: too many redirects (more than {MAX_REDIRECTS})")

    async def _read(self, url: str, resp: aiohttp.ClientResponse) -> _Page:
        body, truncated = await _read_capped(resp.content, self._max_bytes)
        return _Page(
            url=url,
            status=resp.status,
            reason=resp.reason or "",
            content_type=resp.content_type,
            charset=resp.charset,
            body=body,
            truncated=truncated,
        )


def _parse(args: dict[str, Any]) -> _Args:
    try:
        return msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"web_fetch: invalid arguments: {exc}") from None


def _check_url(url: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ToolError(f"web_fetch: invalid URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        shown = parts.scheme or "none"
        raise ToolError(f"web_fetch: only http and https URLs are supported (scheme {shown!r} refused)")
    if not parts.hostname:
        raise ToolError(f"web_fetch: URL {url!r} has no host")
    return url


def _redirect_target(url: str, resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise ToolError(f"web_fetch: HTTP {resp.status} redirect from {url} has no Location header")
    return _check_url(urljoin(url, location))


# --- SSRF guard ----------------------------------------------------------


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use (RFC 8215): a site's own
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # IPv4-compatible (deprecated)
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


def is_public_address(address: str) -> bool:
    """True for a globally routable IP; loopback, private, link-local etc. are not.

    An IPv6 address that carries an IPv4 address (mapped, translated, compatible,
    NAT64, 6to4) is judged by the IPv4 address it leads to: the network delivers it
    there. Local-use NAT64 and Teredo are never public.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip in _TEREDO:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _TRANSLATED or ip in _COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _literal_address(host: str) -> str | None:
    """The IP a host names without DNS: a literal, or a legacy numeric IPv4 form
    (`2130706433`, `0x7f.1`, `0177.0.0.1`) that resolvers accept too."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _check_ip_literal(url: str) -> None:
    # aiohttp connects to IP literals without asking the resolver, so check them here.
    host = urlsplit(url).hostname or ""
    address = _literal_address(host)
    if address is not None and not is_public_address(address):
        raise ToolError(f"web_fetch: refused: {host} is not a public address")


class _BlockedAddressError(OSError):
    """A host name resolved to an address the SSRF guard refuses."""


class _PublicOnlyResolver(AbstractResolver):
    """The default resolver, refusing any host with a non-public address."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        blocked = sorted({r["host"] for r in results if not is_public_address(r["host"])})
        if blocked:
            # One bad address refuses the host: DNS could otherwise mix them in.
            raise _BlockedAddressError(
                f"refused: {host} resolves to non-public address(es) {', '.join(blocked)}"
            )
        return results

    async def close(self) -> None:
        await self._inner.close()


def _describe_client_error(url: str, exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _BlockedAddressError):
        return f"web_fetch: {exc.os_error}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"web_fetch: invalid URL {url!r}: {exc}"
    return f"web_fetch: request to {url} failed: {type(exc).__name__}: {exc}"


# --- body ----------------------------------------------------------------


async def _read_capped(stream: aiohttp.StreamReader, max_bytes: int) -> tuple[bytes, bool]:
    """Read at most `max_bytes`; True when the body was longer."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        room = max_bytes - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _render(page: _Page, max_chars: int) -> ToolResult:
    kind = _kind(page.content_type)
    if not 200 <= page.status < 300:
        excerpt = _to_text(page, kind)[:_ERROR_BODY_CHARS] if kind else ""
        message = f"error: web_fetch: HTTP {page.status} {page.reason} from {page.url}"
        return ToolResult(ok=False, content=message + (f"\n\n{excerpt}" if excerpt.strip() else ""))
    if kind is None:
        raise ToolError(
            f"web_fetch: unsupported content type {page.content_type!r} from {page.url} "
            "(only HTML, text and JSON are supported)"
        )
    lines = [f"URL: {page.url}", f"Content-Type: {page.content_type}"]
    if page.truncated:
        lines.append(f"[truncated: only the first {len(page.body)} bytes were read]")
    text = _to_text(page, kind)
    if len(text) > max_chars:
        lines.append(f"[truncated: showing the first {max_chars} of {len(text)} characters of text]")
        text = text[:max_chars]
    return ToolResult(ok=True, content="\n".join(lines) + "\n\n" + text)


def _kind(content_type: str) -> str | None:
    """'html', 'text' (returned as-is) or None for unsupported types."""
    if content_type in _HTML_TYPES:
        return "html"
    if content_type.startswith("text/") or content_type == "application/json":
        return "text"
    if content_type.startswith("application/") and content_type.endswith("+json"):
        return "text"
    return None


def _to_text(page: _Page, kind: str | None) -> str:
    try:
        text = page.body.decode(page.charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        text = page.body.decode("utf-8", errors="replace")
    return html_to_text(text) if kind == "html" else text


# --- HTML to text --------------------------------------------------------

_SKIP_TAGS = frozenset({"head", "script", "style", "noscript", "template", "svg"})
# Tags that end a paragraph (a blank line) or just a line.
_PARAGRAPH_TAGS = frozenset({"blockquote", "dl", "hr", "ol", "p", "pre", "table", "ul"})
_LINE_TAGS = frozenset(
    {
        "address", "article", "aside", "br", "dd", "div", "dt", "figcaption", "figure",
        "footer", "form", "header", "li", "main", "nav", "section", "tr",
    }
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_SPACES = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collects visible text with line breaks at block boundaries."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.title = ""
        self._current: list[str] = []
        self._prefix = ""  # "- " or "## ", put before the next visible text
        self._skip: list[str] = []  # open tags whose content is dropped
        self._pre = 0
        self._pre_start = False  # browsers drop a newline right after <pre>
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip.clear()  # an unclosed <head> ends where <body> starts
        self._in_title = self._in_title or tag == "title"
        if tag in _SKIP_TAGS:
            self._skip.append(tag)
        if self._skip:
            return
        if tag in _HEADINGS:
            self._paragraph()
            self._prefix = "#" * _HEADINGS[tag] + " "
        elif tag in _PARAGRAPH_TAGS:
            self._paragraph()
        elif tag in _LINE_TAGS:
            self._break()
        if tag == "li":
            self._prefix = "- "
        if tag == "pre":
            self._pre += 1
            self._pre_start = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._skip:
            while self._skip.pop() != tag:
                pass
            return
        if self._skip:
            return
        if tag in _HEADINGS or tag in _PARAGRAPH_TAGS:
            self._paragraph()
        elif tag in _LINE_TAGS:
            self._break()
        if tag == "pre" and self._pre:
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip:
            return
        if self._prefix and data.strip():
            if not "".join(self._current).strip():
                self._current = [self._prefix]
            self._prefix = ""
        if not self._pre:
            self._current.append(data)
            return
        if self._pre_start and data.startswith("\n"):
            data = data[1:]
        self._pre_start = False
        first, *rest = data.split("\n")
        self._current.append(first)
        for line in rest:  # keep preformatted lines, blank ones included
            self.lines.append("".join(self._current).rstrip())
            self._current = [line]

    def close(self) -> None:
        super().close()
        self._break()

    def _break(self) -> None:
        """End the current line."""
        line = "".join(self._current)
        self._current.clear()
        line = line.rstrip() if self._pre else _SPACES.sub(" ", line).strip()
        if line.strip():
            self.lines.append(line)

    def _paragraph(self) -> None:
        """End the current line and leave one blank line."""
        self._break()
        if self.lines and self.lines[-1]:
            self.lines.append("")


def html_to_text(html: str) -> str:
    """Readable text from an HTML document, using only the standard library."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    body = "\n".join(parser.lines).strip("\n")
    title = _SPACES.sub(" ", parser.title).strip()
    return f"Title: {title}\n\n{body}" if title else body
