"""The operator's read side: posture, the run ledger and run timelines.

GET handlers read projections only. Before reading they give the projector a
bounded moment (`settle`) to catch up with what this process has written, so
an operator sees the request that just ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from app.errors import InvalidRequest, NotFound
from app.http import sse
from app.http.deps import HttpDeps
from app.http.openapi import SECURITY, Documented, DocumentedStream, errors
from app.http.wire import RunEventRow, RunEventsPage, RunRow, RunsPage
from app.projections import runs
from app.projections.posture import Posture, TelemetryPosture, read_posture

__all__ = ["CompatController"]

FOLLOW_POLL_S = 0.1
KEEP_ALIVE_S = 15.0


class CompatController(Controller):
    path = "/v1/openai-compat"
    tags = ("operator",)
    security = SECURITY

    @get(
        "/posture",
        summary="Live posture: policy, ledger, route counts, clients",
        operation_class=Documented,
        responses=errors(401, 500),
    )
    async def posture(self, state: State) -> Posture:
        deps: HttpDeps = state.deps
        await deps.settle()
        compat = deps.settings.options.openai_compat
        return read_posture(
            deps.read_conn,
            compat=compat,
            advertised_models=deps.catalog.advertised(),
            degraded=deps.persistence.degraded,
            last_persist_error=deps.persistence.last_error,
            bind=deps.bind,
            telemetry=TelemetryPosture(
                otel_enabled=deps.tracing.enabled,
                exported_spans=deps.tracing.exported_spans,
                dropped_spans=deps.tracing.dropped_spans,
            ),
        )

    @get(
        "/runs",
        summary="The run ledger, newest first",
        operation_class=Documented,
        responses=errors(400, 401, 500),
    )
    async def list_runs(
        self,
        state: State,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None,
            Parameter(description="next_cursor of the previous page", schema_extra={"pattern": "^[0-9]+$"}),
        ] = None,
        session_id: str | None = None,
        outcome: str | None = None,
        route: str | None = None,
        model: str | None = None,
        traffic: Annotated[
            str,
            Parameter(
                description="all (default); client: without operator reads (posture, runs, "
                "run events, permissions); operator: only those",
                schema_extra={"enum": list(runs.TRAFFIC)},
            ),
        ] = "all",
    ) -> RunsPage:
        deps: HttpDeps = state.deps
        if traffic not in runs.TRAFFIC:
            raise InvalidRequest(
                f"traffic must be one of {', '.join(runs.TRAFFIC)} (got {traffic!r}).", param="traffic"
            )
        await deps.settle()
        filters = {
            k: v
            for k, v in {"session_id": session_id, "outcome": outcome, "route": route, "model": model}.items()
            if v is not None
        }
        rows, next_seq = runs.list_runs(
            deps.read_conn, limit=limit, before_seq=_cursor(cursor), filters=filters, traffic=traffic
        )
        return RunsPage(
            data=[msgspec.convert(_without_seq(r), RunRow) for r in rows],
            next_cursor=str(next_seq) if next_seq is not None else None,
        )

    @get(
        "/runs/{run_id:str}/events",
        summary="A run's event timeline (JSON, or SSE to follow it)",
        operation_class=DocumentedStream,
        responses={
            200: ResponseSpec(
                RunEventsPage,
                description="the timeline oldest first; an SSE stream with follow=true "
                "or Accept: text/event-stream",
                generate_examples=False,
            ),
            **errors(400, 401, 404, 500, s404="no such run in the ledger (run_not_found)"),
        },
    )
    async def run_events(
        self, state: State, request: Request[Any, Any, Any], run_id: str, follow: bool = False
    ) -> Response[Any]:
        deps: HttpDeps = state.deps
        await deps.settle()
        request_id = _request_id(run_id)
        if runs.get_run(deps.read_conn, request_id) is None:
            raise NotFound(f"No run '{run_id}' in the ledger.", param="run_id", code="run_not_found")
        wants_stream = follow or "text/event-stream" in request.headers.get("accept", "")
        if wants_stream:
            return Stream(
                _follow(deps, request_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        rows = runs.run_events(deps.read_conn, request_id)
        page = RunEventsPage(request_id=request_id, data=[RunEventRow(**r) for r in rows])
        return Response(page, media_type="application/json")


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise InvalidRequest("cursor must be a next_cursor value from a previous page.", param="cursor")
    return int(cursor)


def _request_id(run_id: str) -> str:
    candidate = run_id.replace("-", "").lower()
    if len(candidate) != 32 or any(c not in "0123456789abcdef" for c in candidate):
        raise NotFound(f"No run '{run_id}' in the ledger.", param="run_id", code="run_not_found")
    return candidate


def _without_seq(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "seq"}


async def _follow(deps: HttpDeps, request_id: str) -> AsyncIterator[bytes]:
    """Replay, then live, until the terminal event."""
    version = 0
    idle = 0.0
    while True:
        if deps.drain is not None and deps.drain.interrupted:  # shutting down: let the worker stop
            yield sse.DONE
            return
        rows = runs.run_events(deps.read_conn, request_id, after_version=version)
        for row in rows:
            version = row["version"]
            yield sse.event(row)
            if row["type"] == "Finished":
                yield sse.DONE
                return
        if rows:
            idle = 0.0
        elif idle >= KEEP_ALIVE_S:
            idle = 0.0
            yield sse.KEEP_ALIVE
        await asyncio.sleep(FOLLOW_POLL_S)
        idle += FOLLOW_POLL_S
