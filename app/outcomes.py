"""The ledger's outcomes: one list, the type every layer annotates an outcome with.

A run ends with exactly one of these (`Finished.outcome`); some are also the
non-terminal action records (`model_override_applied`) or the system's own
(`recovery_failed`, `persist_failed`).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["OUTCOMES", "Outcome"]

Outcome = Literal[
    "final_answer",
    "clarification",
    "queued",
    "resumed",
    "cancelled",
    "model_override_applied",
    "model_override_rejected",
    "auth_failed",
    "invalid_request",
    "recovery_failed",
    "k8s_retry_failed",
    "persist_failed",
    "error_500",
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
