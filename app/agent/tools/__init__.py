"""Built-in agent tools, their contract and the registry that runs them."""

from app.agent.tools.base import Tool, ToolContext, ToolError, ToolResult
from app.agent.tools.bash import Bash
from app.agent.tools.edit_file import EditFile
from app.agent.tools.kubectl import Kubectl
from app.agent.tools.list_dir import ListDir
from app.agent.tools.read_file import ReadFile
from app.agent.tools.registry import ToolRegistry, all_builtin_tools, builtin_tools
from app.agent.tools.search import Search
from app.agent.tools.web_fetch import WebFetch
from app.agent.tools.workspace import resolve_in_workspace
from app.agent.tools.write_file import WriteFile

__all__ = [
    "Bash",
    "EditFile",
    "Kubectl",
    "ListDir",
    "ReadFile",
    "Search",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "WebFetch",
    "WriteFile",
    "all_builtin_tools",
    "builtin_tools",
    "resolve_in_workspace",
]
