"""Registration of kerasq's serializable objects.

``register(alias)`` makes a class loadable by ``tf_keras.models.load_model`` under the
namespaced name ``kerasq>ClassName`` and reachable by a short snake_case alias through
``lookup``. Equality of registered objects is defined once here, from ``get_config()``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from kerasq.compat import keras

T = TypeVar("T")

_ALIASES: dict[str, dict[str, type]] = {}


def register(kind: str, alias: str | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator: Keras-serializable as ``kerasq>Name`` and findable as ``alias``.

    Args:
      kind: the family the alias lives in, e.g. ``"scheme"`` or ``"quantizer"``.
      alias: short name (e.g. ``"pact"``); defaults to the class name in snake_case.
    """

    def decorate(cls: type[T]) -> type[T]:
        name = alias or "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")
        table = _ALIASES.setdefault(kind, {})
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} alias {name!r} is already registered to {table[name].__name__}.")
        table[name] = cls
        cls.alias = name
        return keras.utils.register_keras_serializable(package="kerasq")(cls)

    return decorate


def lookup(kind: str, name: str) -> type:
    """The class registered under ``alias`` ``name`` in family ``kind``."""
    table = _ALIASES.get(kind, {})
    key = name.lower().replace("-", "_")
    if key not in table:
        raise ValueError(f"Unknown {kind} {name!r}; valid names: {', '.join(sorted(table))}. Received: {name!r}")
    return table[key]


def registered(kind: str) -> dict[str, type]:
    """A copy of the alias table of ``kind``."""
    return dict(_ALIASES.get(kind, {}))


def all_custom_objects() -> dict[str, type]:
    """Every registered class by its ``kerasq>Name`` and bare name, for ``custom_object_scope``."""
    objects: dict[str, type] = {}
    for table in _ALIASES.values():
        for cls in table.values():
            objects[f"kerasq>{cls.__name__}"] = cls
            objects[cls.__name__] = cls
    return objects


class ConfigEquality:
    """Mixin for classes with ``get_config()``: equality, hashing, repr and ``from_config``."""

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
