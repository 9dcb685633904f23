"""Slash commands of the input line: parsing only (pure)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["COMMANDS", "HELP", "Command", "Prompt", "Unknown", "parse_input"]

# name typed → canonical command (read-only)
COMMANDS: Mapping[str, str] = MappingProxyType(
    {
        "openai-compat": "posture",
        "openwebui": "posture",
        "run-ledger": "ledger",
        "ledger": "ledger",
        "runs": "runs",
        "questions": "questions",
        "help": "help",
        "quit": "quit",
        "exit": "quit",
    }
)

PRIMARY = "/openai-compat /run-ledger /runs /questions /help /quit"

HELP: tuple[tuple[str, str], ...] = (
    ("/openai-compat  (/openwebui)", "live posture report: policies, models, ledger, routes, UAs"),
    (
        "/run-ledger [all]  (/ledger)",
        "ledger size, degraded flag, newest client runs (all: with operator reads)",
    ),
    ("/runs [N|ID]", "recent chat runs; Enter (or N / an id prefix) replays its timeline"),
    ("/questions [allow|allow_session|deny N]", "pending permission questions: allow or deny"),
    ("/help", "this help"),
    ("/quit  (/exit)", "leave (a self-started server is stopped)"),
    ("anything else", "is sent to the agent as a prompt (model bmo/local: 'list files')"),
)


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # canonical: posture | ledger | runs | questions | help | quit
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str


@dataclass(frozen=True, slots=True)
class Unknown:
    typed: str
    message: str


def parse_input(text: str) -> Command | Prompt | Unknown | None:
    """What the input line means; None for a blank line."""
    stripped = text.strip()
    if not stripped:
        return None
    if not stripped.startswith("/") or stripped.startswith("//"):
        return Prompt(stripped[1:] if stripped.startswith("//") else stripped)
    words = stripped[1:].split()
    if not words:
        return Unknown("/", "type a command after '/', e.g. /help")
    word, *args = words
    name = COMMANDS.get(word.lower())
    if name is not None:
        return Command(name, tuple(args))
    close = difflib.get_close_matches(word.lower(), COMMANDS, n=1, cutoff=0.6)
    hint = f"did you mean /{close[0]}? " if close else ""
    return Unknown(
        f"/{word}",
        f"unknown command /{word}: {hint}commands: {PRIMARY} (/help). "
        "Start with // to send a prompt that begins with a slash.",
    )
