"""Model ids (`<provider>/<model>`) to providers, and what is advertised."""

from __future__ import annotations

from collections.abc import Mapping

from app.providers.base import ChatProvider

__all__ = ["ModelCatalog", "ResolvedModel"]


class ResolvedModel:
    __slots__ = ("id", "model", "provider")

    def __init__(self, id: str, provider: ChatProvider, model: str) -> None:
        self.id = id
        self.provider = provider
        self.model = model


class ModelCatalog:
    def __init__(self, providers: Mapping[str, ChatProvider], advertise: tuple[str, ...] = ()) -> None:
        self._providers = dict(providers)
        known = [f"{name}/{m}" for name, p in self._providers.items() for m in p.models()]
        # `models = []` advertises everything; otherwise only listed ids that resolve.
        self._advertised = [m for m in advertise if m in known] if advertise else known

    def resolve(self, model_id: str) -> ResolvedModel | None:
        name, sep, model = model_id.partition("/")
        provider = self._providers.get(name)
        if not sep or provider is None or model not in provider.models():
            return None
        return ResolvedModel(model_id, provider, model)

    def advertised(self) -> list[str]:
        return list(self._advertised)

    def is_advertised(self, model_id: str) -> bool:
        return model_id in self._advertised

    def providers(self) -> list[ChatProvider]:
        return list(self._providers.values())
