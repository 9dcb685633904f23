"""Thin Litestar controllers, wire Structs, SSE framing and one error mapper."""
