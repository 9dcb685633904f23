"""The environment a tool process starts with: a small base, never the server's secrets.

`bmo serve` holds provider keys and other credentials in its own environment
(configuration interpolates them); a `bash` command, `kubectl` or a stdio MCP
server must not inherit them. They get the base names below, the names the
operator lists in `[options] tool_env_passthrough`, and (MCP servers) the
values of their own `[mcp.<id>] env` table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["BASE_NAMES", "KUBECTL_NAMES", "tool_environment"]

# Locale, paths and identity a shell needs to behave normally; none of them is a secret.
BASE_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TMPDIR",
        "TERM",
        "USER",
        "LOGNAME",
        "SHELL",
        "TZ",
        "COLUMNS",
        "LINES",
    }
)
_BASE_PREFIXES = ("LC_",)
# Where kubectl finds the operator's cluster (paths and in-cluster service addresses).
KUBECTL_NAMES = frozenset({"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"})


def tool_environment(
    source: Mapping[str, str],
    passthrough: Iterable[str] = (),
    *,
    extra_names: Iterable[str] = (),
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Pure: the base names of `source`, the passthrough names, then `overrides` on top."""
    wanted = BASE_NAMES | frozenset(passthrough) | frozenset(extra_names)
    env = {k: v for k, v in source.items() if k in wanted or k.startswith(_BASE_PREFIXES)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if overrides:
        env.update(overrides)
    return env
