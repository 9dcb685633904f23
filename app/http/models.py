"""GET /v1/models: the advertised model ids."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State

from app.http.deps import HttpDeps
from app.http.openapi import SECURITY, Documented, errors
from app.http.wire import ModelList, ModelObject

__all__ = ["ModelsController"]


class ModelsController(Controller):
    path = "/v1/models"
    tags = ("models",)
    security = SECURITY

    @get(
        summary="List the models this server advertises",
        operation_class=Documented,
        responses=errors(401, 500),
    )
    async def list_models(self, state: State) -> ModelList:
        deps: HttpDeps = state.deps
        return ModelList(
            data=[
                ModelObject(id=model_id, created=deps.started_at, owned_by=model_id.split("/")[0])
                for model_id in deps.catalog.advertised()
            ]
        )
