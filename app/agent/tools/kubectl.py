"""`kubectl`: read-only cluster queries, retried with exponential backoff.

Only read verbs are offered, and flags that would change identity, target a
different API server, read local files or never return are refused.
"""

from __future__ import annotations

import asyncio
import re
import signal
from dataclasses import dataclass
from typing import Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.bash import CappedOutput, drain_into, kill_group, reap
from app.providers.base import ToolSchema

__all__ = ["ALLOWED_VERBS", "OUTPUT_CAP", "Kubectl"]

ALLOWED_VERBS = ("get", "describe", "logs", "top", "events")
OUTPUT_CAP = 64 * 1024
_STDERR_CAP = 8 * 1024

# Long flags refused as `--flag` or `--flag=value`.
_REFUSED_LONG = frozenset(
    {
        # identity and credentials
        "--as", "--as-group", "--as-uid", "--token", "--user", "--username", "--password",
        "--client-certificate", "--client-key",
        # another server or config than the operator's
        "--kubeconfig", "--server", "--certificate-authority", "--insecure-skip-tls-verify",
        # local files: read as manifests or templates, or written
        "--filename", "--kustomize", "--template", "--cache-dir", "--profile", "--profile-output",
        # streams that never end on their own
        "--follow", "--watch", "--watch-only",
    }
)  # fmt: skip
# Refused shorthands: -f (--filename, or --follow for logs), -k, -s (--server), -w (--watch).
_REFUSED_SHORT = frozenset("fksw")
# Shorthands that take the rest of the cluster as their value, e.g. -ojson, -lapp=web.
_VALUE_SHORT = frozenset("olncL")
# `-o go-template-file=...` and friends read an arbitrary local file.
_FILE_OUTPUT = re.compile(r"(template|jsonpath)-file", re.IGNORECASE)


class _Args(msgspec.Struct, forbid_unknown_fields=True):
    verb: str
    args: list[str] = msgspec.field(default_factory=list)
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class _Attempt:
    ok: bool
    output: str  # stdout on success, the error text otherwise


class Kubectl:
    schema = ToolSchema(
        name="kubectl",
        description=(
            "Run a read-only kubectl command: verb is one of get, describe, logs, top, "
            "events; args are passed as-is (no shell). Failed calls are retried with backoff. "
            "Flags that change identity, server or config, read local files, or watch/follow "
            "are refused."
        ),
        parameters={
            "type": "object",
            "properties": {
                "verb": {"type": "string", "enum": list(ALLOWED_VERBS)},
                "args": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": [],
                    "description": "Arguments after the verb, e.g. ['pods', '-o', 'wide'].",
                },
                "namespace": {"type": ["string", "null"], "description": "Namespace (--namespace)."},
            },
            "required": ["verb"],
            "additionalProperties": False,
        },
    )
    mutating: bool = False

    def __init__(
        self, binary: str = "kubectl", tries: int = 3, backoff_s: float = 0.5, timeout_s: float = 20
    ) -> None:
        if tries < 1:
            raise ValueError("tries must be at least 1")
        self._binary = binary
        self._tries = tries
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        parsed = _parse(args)
        argv = [parsed.verb, *parsed.args]
        if parsed.namespace is not None:
            argv += ["--namespace", parsed.namespace]
        shown = "kubectl " + " ".join(argv)
        last_error = ""
        for attempt in range(1, self._tries + 1):
            try:
                result = await self._invoke(argv)
            except (FileNotFoundError, PermissionError):  # missing or not executable
                return _not_installed(self._binary)
            if result.ok:
                return ToolResult(ok=True, content=result.output or "(no output)")
            last_error = result.output
            if attempt < self._tries:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        noun = "try" if self._tries == 1 else "tries"
        return ToolResult(
            ok=False,
            content=f"error: `{shown}` failed after {self._tries} {noun}; last error:\n{last_error}",
            error_kind="k8s_retry_exhausted",
        )

    async def _invoke(self, argv: list[str]) -> _Attempt:
        """One kubectl run, bounded by the per-try timeout."""
        # No cwd: every flag that reads or writes local files is refused anyway.
        proc = await asyncio.create_subprocess_exec(
            self._binary,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # so a timeout can kill credential plugins too
        )
        stdout, stderr = CappedOutput(OUTPUT_CAP), CappedOutput(_STDERR_CAP)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.gather(drain_into(proc.stdout, stdout), drain_into(proc.stderr, stderr))
                code = await proc.wait()
        except TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await reap(proc)
            return _Attempt(ok=False, output=f"timed out after {self._timeout_s:g} s")
        except BaseException:
            kill_group(proc.pid, signal.SIGKILL)  # cancelled: leave nothing running
            await reap(proc)
            raise
        if code == 0:
            return _Attempt(ok=True, output=stdout.text() or stderr.text().strip())
        error = stderr.text().strip() or stdout.text().strip()
        return _Attempt(ok=False, output=error or f"exit code {code}")


def _parse(args: dict[str, Any]) -> _Args:
    try:
        parsed = msgspec.convert(args, _Args, strict=False)
    except msgspec.ValidationError as exc:
        raise ToolError(f"kubectl: invalid arguments: {exc}") from None
    if parsed.verb not in ALLOWED_VERBS:
        raise ToolError(
            f"kubectl: verb {parsed.verb!r} is not allowed; allowed verbs: {', '.join(ALLOWED_VERBS)}"
        )
    for arg in parsed.args:
        _check_arg(arg)
    if parsed.namespace is not None:
        _check_namespace(parsed.namespace)
    return parsed


def _check_arg(arg: str) -> None:
    if "\x00" in arg:
        raise ToolError("kubectl: an argument contains a NUL byte")
    if _FILE_OUTPUT.search(arg):
        raise ToolError(f"kubectl: argument {arg!r} is not allowed (reads a local file)")
    if arg.startswith("--"):
        if arg.split("=", 1)[0] in _REFUSED_LONG:
            raise ToolError(f"kubectl: flag {arg.split('=', 1)[0]!r} is not allowed")
    elif arg.startswith("-"):
        _check_short_cluster(arg)


def _check_short_cluster(arg: str) -> None:
    """Check `-abc` shorthand clusters as the flag parser reads them."""
    for char in arg[1:]:
        if char in _REFUSED_SHORT:
            raise ToolError(f"kubectl: flag '-{char}' is not allowed (in {arg!r})")
        if char in _VALUE_SHORT:
            return  # the rest is this flag's value


def _check_namespace(namespace: str) -> None:
    if not namespace or namespace.startswith("-") or "\x00" in namespace:
        raise ToolError(f"kubectl: invalid namespace {namespace!r}")


def _not_installed(binary: str) -> ToolResult:
    return ToolResult(
        ok=False,
        content=f"error: kubectl is not installed (no executable {binary!r} found); not retried",
        error_kind="unavailable",
    )
