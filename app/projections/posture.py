"""The posture snapshot: one pure function, rendered by HTTP, CLI and TUI."""

from __future__ import annotations

from typing import Any

import msgspec

from app.projections import counts, runs

__all__ = [
    "BindPosture",
    "LedgerPosture",
    "Posture",
    "RecentOutcome",
    "TelemetryPosture",
    "UserAgentCount",
    "label",
    "read_posture",
    "snapshot",
]


class LedgerPosture(msgspec.Struct, frozen=True):
    runs: int
    capacity: int
    degraded: bool
    last_persist_error: str | None


class UserAgentCount(msgspec.Struct, frozen=True):
    user_agent: str
    count: int


class RecentOutcome(msgspec.Struct, frozen=True):
    request_id: str
    elapsed_ms: float | None
    outcome: str


class BindPosture(msgspec.Struct, frozen=True):
    addr: str
    loopback: bool
    auth: bool


class TelemetryPosture(msgspec.Struct, frozen=True):
    """OTel export health: the SDK drops spans quietly, so bmo counts them."""

    otel_enabled: bool = False
    exported_spans: int = 0
    dropped_spans: int = 0


class Posture(msgspec.Struct, frozen=True):
    enabled: bool
    tool_policy: str
    ambiguity_action: str
    model_override_policy: str
    advertised_models: list[str]
    label: str
    ledger: LedgerPosture
    routes: dict[str, int]
    top_user_agents: list[UserAgentCount]
    recent_outcomes: list[RecentOutcome]
    bind: BindPosture
    telemetry: TelemetryPosture = TelemetryPosture()


def label(*, enabled: bool, tool_policy: str, degraded: bool) -> str:
    """The sidebar label: degraded overrides the policy label."""
    if degraded:
        return "degraded — persist failures"
    if not enabled:
        return "disabled"
    return f"enabled ({tool_policy})"


def snapshot(
    *,
    compat: Any,
    advertised_models: list[str],
    ledger: LedgerPosture,
    routes: dict[str, int],
    top_user_agents: list[dict[str, Any]],
    recent_outcomes: list[dict[str, Any]],
    bind: BindPosture,
    telemetry: TelemetryPosture | None = None,
) -> Posture:
    return Posture(
        enabled=compat.enabled,
        tool_policy=compat.tool_policy,
        ambiguity_action=compat.ambiguity_action,
        model_override_policy=compat.model_override_policy,
        advertised_models=advertised_models,
        label=label(enabled=compat.enabled, tool_policy=compat.tool_policy, degraded=ledger.degraded),
        ledger=ledger,
        routes=routes,
        top_user_agents=[UserAgentCount(**u) for u in top_user_agents],
        recent_outcomes=[RecentOutcome(**o) for o in recent_outcomes],
        bind=bind,
        telemetry=telemetry or TelemetryPosture(),
    )


def read_posture(
    conn: Any,
    *,
    compat: Any,
    advertised_models: list[str],
    degraded: bool,
    last_persist_error: str | None,
    bind: BindPosture,
    telemetry: TelemetryPosture | None = None,
) -> Posture:
    """Query the read models and build the snapshot."""
    return snapshot(
        compat=compat,
        advertised_models=advertised_models,
        ledger=LedgerPosture(
            runs=runs.run_count(conn),
            capacity=compat.ledger_capacity,
            degraded=degraded,
            last_persist_error=last_persist_error,
        ),
        routes=counts.route_counts(conn),
        top_user_agents=counts.top_user_agents(conn),
        recent_outcomes=runs.recent_outcomes(conn),
        bind=bind,
        telemetry=telemetry,
    )
