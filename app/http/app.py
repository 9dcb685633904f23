"""The Litestar application: controllers, one error mapper, OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from app.http.chat import ChatController
from app.http.compat import CompatController
from app.http.deps import HttpDeps
from app.http.errors import exception_handler
from app.http.health import HealthController
from app.http.models import ModelsController
from app.http.openapi import COMPONENTS
from app.http.permissions import PermissionsController
from app.http.review import ReviewController

__all__ = ["MAX_BODY_BYTES", "create_litestar"]

MAX_BODY_BYTES = 4 * 1024 * 1024


def create_litestar(
    deps: HttpDeps,
    *,
    on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    version: str = "0",
) -> Litestar:
    return Litestar(
        route_handlers=[
            ChatController,
            ModelsController,
            CompatController,
            PermissionsController,
            ReviewController,
            HealthController,
        ],
        template_config=TemplateConfig(
            directory=Path(__file__).parent / "templates", engine=JinjaTemplateEngine
        ),
        state=State({"deps": deps}),
        exception_handlers={Exception: exception_handler},
        request_max_body_size=MAX_BODY_BYTES,
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=OpenAPIConfig(
            title="bmo",
            version=version,
            description="OpenAI-compatible coding-agent hub: chat, models, posture and the run ledger.",
            path="/schema",
            components=COMPONENTS,
        ),
        debug=False,
    )
