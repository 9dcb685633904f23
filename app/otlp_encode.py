"""OTLP/protobuf encoding of finished spans, written out by hand.

The SDK's encoder builds a protobuf object for every span, attribute and
value (and hashes each span's resource through `json.dumps`): ≈ 40 µs a span,
so one 500-span batch holds the GIL for ~17 ms on the export thread, and the
request that is being served meanwhile waits (the c=1 p99 tail in
docs/performance-analysis.md). The wire format of the few messages a span needs
is small enough to write directly (field numbers from opentelemetry-proto's
trace/common/resource `.proto` files); the output decodes to the same
`ExportTraceServiceRequest` as the SDK's (tests/unit/test_otlp_encode.py).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["OtlpEncoder", "encode_request"]

_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # int64: two's complement, ten bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


_LEN_TAGS = [bytes(((field << 3) | 2,)) for field in range(16)]  # fields 1-15: one byte


def _len(field: int, payload: bytes) -> bytes:
    size = len(payload)
    tag = _LEN_TAGS[field] if field < 16 else _tag(field, 2)
    if size < 0x80:
        return tag + bytes((size,)) + payload
    return tag + _varint(size) + payload


def _text(field: int, text: str) -> bytes:
    return _len(field, text.encode()) if text else b""


def _uint(field: int, value: int) -> bytes:
    return _tag(field, 0) + _varint(value) if value else b""


def _fixed64(field: int, value: int) -> bytes:
    return _tag(field, 1) + _pack_fixed64(value) if value else b""


def _any_value(value: Any) -> bytes:
    """An `AnyValue` message (the SDK's `_encode_value`, case for case)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _tag(2, 0) + _varint(int(value))
    if isinstance(value, str):
        return _len(1, value.encode())
    if isinstance(value, int):
        return _tag(3, 0) + _varint(value)
    if isinstance(value, float):
        return _tag(4, 1) + _pack_double(value)
    if isinstance(value, bytes):
        return _len(7, value)
    if isinstance(value, Sequence):
        return _len(5, b"".join(_len(1, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _len(6, b"".join(_len(1, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode {type(value).__name__} as an attribute value")


def _key_value(key: str, value: Any) -> bytes:
    return _len(1, key.encode()) + _len(2, _any_value(value))


class _Pairs:
    """Encoded `KeyValue` fields by (field, key, value): span attributes repeat a lot (routes,
    models, outcomes, status codes). Bounded: cleared when full."""

    def __init__(self, limit: int = 8192) -> None:
        self._cache: dict[tuple[int, str, type, Any], bytes] = {}
        self._limit = limit

    def field(self, field: int, key: str, value: Any) -> bytes:
        try:
            ident = (field, key, value.__class__, value)
            cached = self._cache.get(ident)
        except TypeError:  # a list value: not hashable, not cached
            return _len(field, _key_value(key, value))
        if cached is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            cached = self._cache[ident] = _len(field, _key_value(key, value))
        return cached


def _attributes(field: int, attributes: Mapping[str, Any] | None, pairs: _Pairs) -> bytes:
    if not attributes:
        return b""
    return b"".join([pairs.field(field, k, v) for k, v in attributes.items()])


def _flags(field: int, parent: Any) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _tag(field, 5) + _pack_fixed32(flags)


def _span(span: Any, pairs: _Pairs) -> bytes:
    context = span.get_span_context()
    parts = [
        _len(1, context.trace_id.to_bytes(16, "big")),
        _len(2, context.span_id.to_bytes(8, "big")),
    ]
    if context.trace_state:
        parts.append(_text(3, ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
    if span.parent is not None:
        parts.append(_len(4, span.parent.span_id.to_bytes(8, "big")))
    parts += [
        _text(5, span.name),
        _uint(6, span.kind.value + 1),  # SDK INTERNAL=0 ... ; proto SPAN_KIND_INTERNAL=1 ...
        _fixed64(7, span.start_time or 0),
        _fixed64(8, span.end_time or 0),
        _attributes(9, span.attributes, pairs),
        _uint(10, span.dropped_attributes),
    ]
    for event in span.events:
        body = _fixed64(1, event.timestamp or 0) + _text(2, event.name)
        body += _attributes(3, event.attributes, pairs)
        parts.append(_len(11, body + _uint(4, event.dropped_attributes)))
    parts.append(_uint(12, span.dropped_events))
    for link in span.links:
        body = (
            _len(1, link.context.trace_id.to_bytes(16, "big"))
            + _len(2, link.context.span_id.to_bytes(8, "big"))
            + _attributes(4, link.attributes, pairs)
            + _uint(5, link.dropped_attributes)
        )
        parts.append(_len(13, body + _flags(6, link.context)))
    parts.append(_uint(14, span.dropped_links))
    status = span.status
    if status is not None:
        parts.append(_len(15, _text(2, status.description or "") + _uint(3, status.status_code.value)))
    parts.append(_flags(16, span.parent))
    return b"".join(parts)


def _scope(scope: Any, pairs: _Pairs) -> bytes:
    if scope is None:
        return b""
    return _text(1, scope.name) + _text(2, scope.version or "") + _attributes(3, scope.attributes, pairs)


def encode_request(spans: Sequence[Any], pairs: _Pairs | None = None) -> bytes:
    """The serialized `ExportTraceServiceRequest` for these finished SDK spans.

    Pass the same `pairs` (an `OtlpEncoder` does) to reuse encoded attributes across batches.
    """
    pairs = pairs if pairs is not None else _Pairs()
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        scopes = grouped.setdefault(id(resource), (resource, {}))[1]
        scopes.setdefault(id(scope), (scope, []))[1].append(_span(span, pairs))
    out = []
    for resource, scopes in grouped.values():
        body = _len(1, _attributes(1, resource.attributes, pairs))
        for scope, encoded in scopes.values():
            scope_spans = _len(1, _scope(scope, pairs)) + b"".join(_len(2, s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _text(3, scope.schema_url)
            body += _len(2, scope_spans)
        body += _text(3, resource.schema_url)
        out.append(_len(1, body))
    return b"".join(out)


class OtlpEncoder:
    """`encode_request` with its attribute cache kept from batch to batch (one per exporter)."""

    def __init__(self) -> None:
        self._pairs = _Pairs()

    def encode(self, spans: Sequence[Any]) -> bytes:
        return encode_request(spans, self._pairs)
