"""Name -> class registries, so configs can build losses, miners, datasets and backbones by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class Registry:
    """A dictionary of named constructors with helpful errors.

    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("triplet")
    ... class TripletLoss: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def lookup(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}") from None

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword parameters the named constructor accepts (used to validate configs)."""
        target = self.lookup(name)
        target = target.__init__ if inspect.isclass(target) else target
        params = dict(inspect.signature(target).parameters)
        params.pop("self", None)
        return {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def build(self, name: str, **kwargs: Any) -> Any:
        accepted = self.parameters(name)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"{self.kind} {name!r} has no parameter {unknown[0]!r}; it accepts {sorted(accepted)}"
            )
        return self.lookup(name)(**kwargs)
