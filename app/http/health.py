"""Liveness and readiness probes (no token required: probes carry none)."""

from __future__ import annotations

import asyncio

from litestar import Controller, Response, get
from litestar.datastructures import State

from app.errors import ServiceUnavailable
from app.http.deps import HttpDeps
from app.http.openapi import Documented, errors
from app.http.wire import HealthStatus

__all__ = ["HealthController"]


class HealthController(Controller):
    tags = ("health",)

    @get("/healthz", summary="Liveness", operation_class=Documented)
    async def healthz(self) -> HealthStatus:
        return HealthStatus(status="ok")

    @get(
        "/readyz",
        summary="Readiness: store writable, projector caught up within 1 s",
        operation_class=Documented,
        responses=errors(503, s503="the store is not writable, or the projector lags more than 1 s"),
    )
    async def readyz(self, state: State) -> Response[HealthStatus]:
        deps: HttpDeps = state.deps
        try:
            await asyncio.to_thread(deps.store.check_writable)
        except Exception as exc:
            raise ServiceUnavailable(
                f"event store is not writable: {exc}", code="store_not_writable"
            ) from exc
        head = await asyncio.to_thread(deps.store.max_notification_id)
        if not await deps.projector.wait_for(head, 1.0):
            raise ServiceUnavailable(
                f"projector is behind (at {deps.projector.position}, store at {head})",
                code="projector_lagging",
            )
        checks = {"store": "writable", "projector": "caught up", **_store_identity(deps.store)}
        return Response(HealthStatus(status="ready", checks=checks))


def _store_identity(store: object) -> dict[str, str]:
    """Which store this instance serves from; on a shared store, which instance this is."""
    if not getattr(store, "url", ""):
        return {"store_backend": "sqlite"}
    return {"store_backend": "postgresql", "instance": str(getattr(store, "instance_id", ""))}
