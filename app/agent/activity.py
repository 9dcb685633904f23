"""Tool activity a human can see: Open WebUI's collapsible tool-call block."""

from __future__ import annotations

import html
import json

from app.agent.tools.base import ToolResult
from app.providers.base import ToolCall

__all__ = ["RESULT_PREVIEW", "details_block"]

RESULT_PREVIEW = 4000  # characters of a tool result shown in the block


def details_block(call: ToolCall, result: ToolResult) -> str:
    """`<details type="tool_calls">` exactly as Open WebUI renders its own tool calls."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.arguments
    shown = result.shown if result.shown is not None else result.content
    if len(shown) > RESULT_PREVIEW:
        shown = shown[:RESULT_PREVIEW] + f"\n… ({len(shown) - RESULT_PREVIEW} more characters)"
    attrs = {
        "type": "tool_calls",
        "done": "true",
        "id": call.id,
        "name": call.name,
        "arguments": json.dumps(arguments, ensure_ascii=False),
        "result": json.dumps(shown, ensure_ascii=False),
    }
    rendered = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    summary = "Tool Executed" if result.ok else "Tool Failed"
    return f"<details {rendered}>\n<summary>{summary}</summary>\n</details>\n"
