"""Built-in agent tools, their contract and the registry that runs them."""

from app.agent.tools.base import Tool, ToolContext, ToolError, ToolResult
from app.agent.tools.list_dir import ListDir
from app.agent.tools.read_file import ReadFile
from app.agent.tools.registry import ToolRegistry, builtin_tools
from app.agent.tools.search import Search
from app.agent.tools.workspace import resolve_in_workspace

__all__ = [
    "ListDir",
    "ReadFile",
    "Search",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "builtin_tools",
    "resolve_in_workspace",
]
