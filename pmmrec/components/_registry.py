"""The registry of component types: stable type names (`user_encoder/sasrec`) -> classes, never import paths.

Private helper of `pmmrec.components`: it imports no component file, so any module may register or look up types.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar

from pmmrec.errors import ArtefactError


class Registrable(Protocol):
    """What the registry needs of a class: its stable type name."""

    type_name: ClassVar[str]


C = TypeVar("C", bound=type[Registrable])

_REGISTRY: dict[str, Any] = {}


def register_component(cls: C) -> C:
    """Class decorator: make `cls` loadable under its stable `type_name`."""
    name = cls.type_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"component type {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def component_class(type_name: str, *, source: str = "config.json") -> Any:
    """The class registered under `type_name`; a clear error for unknown names."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ArtefactError(f"{source}: unknown component type {type_name!r} (this pmmrec knows: {known})") from None


def registered_types() -> dict[str, Any]:
    """A copy of the registry (type name -> class)."""
    return dict(_REGISTRY)
