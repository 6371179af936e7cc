"""One registry per kind (problems, architectures, weightings, aggregators, distributions).

Names are what users type in YAML. Unknown names fail with the list of valid names. A user class can
be referenced as ``package.module:Class``; it is imported only from that explicit path.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from study.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> class mapping with helpful errors."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str | None = None, *aliases: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            key = (name or getattr(cls, "name", None) or cls.__name__).lower()
            for k in (key, *(a.lower() for a in aliases)):
                if k in self._items and self._items[k] is not cls:
                    raise RuntimeError(f"{self.kind} {k!r} registered twice")
                self._items[k] = cls
            if getattr(cls, "name", None) is None or "name" not in cls.__dict__:
                cls.name = key  # type: ignore[attr-defined]
            return cls

        return deco

    def names(self) -> list[str]:
        """Canonical names (aliases folded), sorted."""
        seen: dict[type[T], str] = {}
        for k, cls in self._items.items():
            seen.setdefault(cls, getattr(cls, "name", k))
        return sorted(set(seen.values()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.lower() in self._items or ":" in name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, key: str | None = None) -> type[T]:
        """Resolve ``name`` (a registered name or ``module:Class``) or raise SpecError naming ``key``."""
        if not isinstance(name, str) or not name:
            raise SpecError(key, f"expected a {self.kind} name, got {name!r}; valid: {', '.join(self.names())}")
        if ":" in name:
            return self._import(name, key)
        try:
            return self._items[name.lower()]
        except KeyError:
            close = difflib.get_close_matches(name.lower(), list(self._items), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(
                key, f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"
            ) from None

    def _import(self, ref: str, key: str | None) -> type[T]:
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(key, f"cannot import module {module_name!r} for {self.kind} {ref!r}: {exc}") from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise SpecError(key, f"module {module_name!r} has no attribute {attr!r} (from {ref!r})") from None


def discover(package: str, path, skip: set[str] | frozenset[str] = frozenset({"base"})) -> None:
    """Import every module of a package (except ``skip`` and ``_private`` ones) so they register."""
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def instantiate(cls: type[T], params: dict | None, key: str | None, /, *args, **context) -> T:
    """Build ``cls(*args, **context, **params)``, turning bad parameters into a one-line SpecError.

    Unknown keys are reported with the list of accepted ones; a ``ValueError``/``TypeError`` raised by the
    constructor (the place each class validates its own ranges) is reported against ``key``.
    """
    import inspect

    params = dict(params or {})
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        sig = None
    if sig is not None:
        accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if not accepts_kwargs:
            allowed = [
                n for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in context
            ][len(args):]
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                valid = ", ".join(allowed) if allowed else "none"
                label = getattr(cls, "name", cls.__name__)
                raise SpecError(key, f"unknown parameter {unknown[0]!r} for {label!r}; valid: {valid}")
    try:
        return cls(*args, **context, **params)
    except SpecError as exc:  # keys inside a component are relative to it: prefix the outer key
        if key is None:
            raise
        raise SpecError(f"{key}.{exc.key}" if exc.key else key, exc.message) from None
    except (ValueError, TypeError) as exc:
        raise SpecError(key, str(exc)) from None
