"""`kubectl`: read-only cluster queries, retried with exponential backoff.

Read-only is an allow-list, not a deny-list: only the read verbs below, and for
each verb only the flags listed for it (so nothing that changes identity,
server or config, reads a local file, reaches the API server's raw paths or
proxy subresources, or never returns). Output formats are checked too: the
`*-file` formats read local files. Anything else is refused with the list of
what is allowed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from app.agent.tools.base import ToolContext, ToolError, ToolResult
from app.agent.tools.bash import CappedOutput, drain_into, kill_group, reap, spawn_guarded
from app.agent.tools.environment import KUBECTL_NAMES, tool_environment
from app.agent.tools.process_guard import GroupRecords
from app.providers.base import ToolSchema

__all__ = ["ALLOWED_FLAGS", "ALLOWED_VERBS", "OUTPUT_CAP", "Kubectl"]

ALLOWED_VERBS = ("get", "describe", "logs", "top", "events")
OUTPUT_CAP = 64 * 1024
_STDERR_CAP = 8 * 1024

_VALUE = True  # the flag takes a value
_BOOL = False  # a switch (`--flag` or `--flag=true|false`)
_COMMON: dict[str, bool] = {"--namespace": _VALUE, "--request-timeout": _VALUE}
_LISTING: dict[str, bool] = {
    "--selector": _VALUE, "--field-selector": _VALUE, "--all-namespaces": _BOOL, "--chunk-size": _VALUE,
}  # fmt: skip
_PRINTING: dict[str, bool] = {
    "--output": _VALUE, "--no-headers": _BOOL, "--show-labels": _BOOL, "--label-columns": _VALUE,
    "--sort-by": _VALUE, "--show-kind": _BOOL, "--show-managed-fields": _BOOL,
    "--allow-missing-template-keys": _BOOL, "--ignore-not-found": _BOOL,
}  # fmt: skip
ALLOWED_FLAGS: dict[str, dict[str, bool]] = {
    "get": {**_COMMON, **_LISTING, **_PRINTING, "--subresource": _VALUE},
    "describe": {**_COMMON, **_LISTING, "--show-events": _BOOL},
    "logs": {
        **_COMMON, "--selector": _VALUE, "--container": _VALUE, "--all-containers": _BOOL,
        "--previous": _BOOL, "--since": _VALUE, "--since-time": _VALUE, "--tail": _VALUE,
        "--timestamps": _BOOL, "--limit-bytes": _VALUE, "--prefix": _BOOL, "--ignore-errors": _BOOL,
        "--max-log-requests": _VALUE, "--pod-running-timeout": _VALUE,
    },
    "top": {
        **_COMMON, **_LISTING, "--containers": _BOOL, "--sort-by": _VALUE, "--no-headers": _BOOL,
        "--sum": _BOOL, "--use-protocol-buffers": _BOOL,
    },
    "events": {
        **_COMMON, "--all-namespaces": _BOOL, "--for": _VALUE, "--types": _VALUE, "--output": _VALUE,
        "--no-headers": _BOOL, "--chunk-size": _VALUE, "--allow-missing-template-keys": _BOOL,
    },
}  # fmt: skip
_SHORT = {
    "n": "--namespace", "l": "--selector", "A": "--all-namespaces", "o": "--output",
    "L": "--label-columns", "c": "--container", "p": "--previous",
}  # fmt: skip
# Output formats, by the name before `=`; the `*-file` variants read local files.
_OUTPUT_FORMATS = frozenset(
    {
        "json",
        "yaml",
        "wide",
        "name",
        "jsonpath",
        "jsonpath-as-json",
        "custom-columns",
        "go-template",
        "template",
    }
)
_SUBRESOURCES = frozenset({"status", "scale"})
_BOOLEAN_VALUES = frozenset({"true", "false"})
_FILE_OUTPUT = re.compile(r"-file\b", re.IGNORECASE)


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
            "events; args are resource types/names and the verb's read-only flags (selectors, "
            "-o json|yaml|wide|name|jsonpath=...|custom-columns=..., logs --tail/--since/-c), "
            "passed without a shell. Other flags are refused. Failed calls are retried with backoff."
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
        self,
        binary: str = "kubectl",
        tries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 20,
        *,
        env: Mapping[str, str] | None = None,
        records: GroupRecords | None = None,
    ) -> None:
        """`env`: kubectl's whole environment (default: the scrubbed base of this process's plus
        KUBECONFIG and the in-cluster service address)."""
        if tries < 1:
            raise ValueError("tries must be at least 1")
        self._env = env
        self._records = records
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
        # No cwd: no allowed flag reads or writes local files. Own group, so a timeout kills
        # credential plugins too.
        env = self._env if self._env is not None else tool_environment(os.environ, extra_names=KUBECTL_NAMES)
        guarded = await spawn_guarded([self._binary, *argv], env=env, records=self._records)
        try:
            return await self._collect(guarded.proc)
        finally:
            guarded.close()

    async def _collect(self, proc: asyncio.subprocess.Process) -> _Attempt:
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
    _check_args(parsed.verb, parsed.args)
    if parsed.namespace is not None:
        _check_namespace(parsed.namespace)
    return parsed


def _check_args(verb: str, args: list[str]) -> None:
    """Every argument is a positional name or an allowed flag of `verb` with a valid value."""
    allowed = ALLOWED_FLAGS[verb]
    rest = iter(args)
    for arg in rest:
        if "\x00" in arg:
            raise ToolError("kubectl: an argument contains a NUL byte")
        if not arg.startswith("-"):
            _check_positional(arg)
            continue
        name, value = _split_flag(arg)
        if name not in allowed:
            raise ToolError(
                f"kubectl: flag {arg.split('=', 1)[0]!r} is not allowed for {verb!r}; "
                f"allowed: {', '.join(sorted(allowed))} (short: {_shorts(allowed)})"
            )
        if allowed[name] is _VALUE and value is None:
            value = next(rest, None)
            if value is None:
                raise ToolError(f"kubectl: flag {name!r} needs a value")
        _check_value(name, value)


def _split_flag(arg: str) -> tuple[str, str | None]:
    """`--flag=v`, `--flag`, `-o v`, `-ojson`, `-o=json` as (long name, value or None)."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return name, value if eq else None
    if arg == "-" or arg[1] not in _SHORT:
        raise ToolError(f"kubectl: flag {arg!r} is not allowed")
    name = _SHORT[arg[1]]
    tail = arg[2:].removeprefix("=")
    if not tail:
        return name, None
    if name in ("--all-namespaces", "--previous"):
        raise ToolError(f"kubectl: flag {arg!r} is not allowed (write switches separately, e.g. '-A')")
    return name, tail


def _check_positional(arg: str) -> None:
    if not arg or arg.startswith("/") or "://" in arg:
        raise ToolError(f"kubectl: argument {arg!r} is not allowed (a resource type or name is expected)")


def _check_value(name: str, value: str | None) -> None:
    if value is None:
        return
    if name == "--output":
        kind = value.split("=", 1)[0].lower()
        if kind not in _OUTPUT_FORMATS or _FILE_OUTPUT.search(kind):
            known = ", ".join(sorted(_OUTPUT_FORMATS))
            raise ToolError(f"kubectl: output format {kind!r} is not allowed; allowed: {known}")
    elif name == "--subresource" and value not in _SUBRESOURCES:
        raise ToolError(f"kubectl: subresource {value!r} is not allowed; allowed: status, scale")
    elif name in _BOOL_NAMES and value.lower() not in _BOOLEAN_VALUES:
        raise ToolError(f"kubectl: flag {name!r} takes true or false, not {value!r}")


_BOOL_NAMES = frozenset(n for flags in ALLOWED_FLAGS.values() for n, kind in flags.items() if kind is _BOOL)


def _shorts(allowed: Mapping[str, bool]) -> str:
    return " ".join(f"-{short}" for short, name in _SHORT.items() if name in allowed) or "none"


def _check_namespace(namespace: str) -> None:
    if not namespace or namespace.startswith("-") or "\x00" in namespace:
        raise ToolError(f"kubectl: invalid namespace {namespace!r}")


def _not_installed(binary: str) -> ToolResult:
    return ToolResult(
        ok=False,
        content=f"error: kubectl is not installed (no executable {binary!r} found); not retried",
        error_kind="unavailable",
    )
