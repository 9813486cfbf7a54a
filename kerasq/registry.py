"""Registration of kerasq's serializable objects.

``register(kind, alias, presets)`` makes a class loadable by ``tf_keras.models.load_model``
under the namespaced name ``kerasq>ClassName``, reachable by a short snake_case alias, and
optionally by preset names that stand for the class with fixed arguments (``"bwn"`` is
``Binary(method="bwn")``). ``create`` builds an object from any of those names. The tables
are filled by the decorator where each class is defined; this module imports nothing of
kerasq but ``compat``, so any import order works. Equality of registered objects is defined
once here, from ``get_config()``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from kerasq.compat import keras

T = TypeVar("T")

_ALIASES: dict[str, dict[str, type]] = {}
_PRESETS: dict[str, dict[str, tuple[type, dict[str, Any]]]] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def register(
    kind: str, alias: str | None = None, presets: dict[str, dict[str, Any]] | None = None
) -> Callable[[type[T]], type[T]]:
    """Class decorator: Keras-serializable as ``kerasq>Name`` and findable as ``alias``.

    Args:
      kind: the family the alias lives in, e.g. ``"scheme"`` or ``"quantizer"``.
      alias: short name (e.g. ``"pact"``); defaults to the class name in snake_case.
      presets: more names for the class with fixed constructor arguments, e.g.
        ``{"bwn": {"method": "bwn"}}``.
    """

    def decorate(cls: type[T]) -> type[T]:
        name = alias or "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")
        table = _ALIASES.setdefault(kind, {})
        preset_table = _PRESETS.setdefault(kind, {})
        for key in [name, *(presets or {})]:
            owner = table.get(key) or preset_table.get(key, (None,))[0]
            if owner is not None and owner.__name__ != cls.__name__:
                raise ValueError(f"{kind} name {key!r} is already registered to {owner.__name__}.")
        table[name] = cls
        for preset, arguments in (presets or {}).items():
            preset_table[_key(preset)] = (cls, dict(arguments))
        cls.alias = name
        return keras.utils.register_keras_serializable(package="kerasq")(cls)

    return decorate


def names(kind: str) -> list[str]:
    """Every alias and preset name of family ``kind``, sorted."""
    return sorted(set(_ALIASES.get(kind, {})) | set(_PRESETS.get(kind, {})))


def lookup(kind: str, name: str) -> type:
    """The class registered under alias (or preset) ``name`` in family ``kind``."""
    return _resolve(kind, name)[0]


def create(kind: str, name: str) -> Any:
    """An object of family ``kind`` from an alias (default arguments) or a preset name."""
    cls, arguments = _resolve(kind, name)
    return cls(**arguments)


def get(kind: str, value: Any, base: type) -> Any:
    """An object of family ``kind`` from an instance of ``base``, a registered name or a Keras config dict."""
    if isinstance(value, base):
        return value
    if isinstance(value, dict):
        return keras.utils.deserialize_keras_object(value)
    if isinstance(value, str):
        return create(kind, value)
    raise TypeError(f"{kind} must be a kerasq {base.__name__}, a name or a config dict. Received: {value!r}")


def _resolve(kind: str, name: str) -> tuple[type, dict[str, Any]]:
    key = _key(name)
    if key in _PRESETS.get(kind, {}):
        return _PRESETS[kind][key]
    if key in _ALIASES.get(kind, {}):
        return _ALIASES[kind][key], {}
    raise ValueError(f"Unknown {kind} {name!r}; valid names: {', '.join(names(kind))}. Received: {name!r}")


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
