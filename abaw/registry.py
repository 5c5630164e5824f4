"""A tiny name → factory registry, in the spirit of timm's `register_model`."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from abaw.errors import AbawError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps names to factories. Use `@REG.register("name")` to add one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise AbawError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
