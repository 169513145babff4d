"""Name -> plug-in class: the one registry behind every plug-in package (prefix methods, question
layouts). A plug-in file decorates its class with the package's ``register``; the package's
``__init__`` imports every file, so adding a file is the whole change."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry(dict):
    """A dict of registered classes by their ``name`` attribute, with a checking ``register``."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        super().__init__()
        self.kind = kind  # what a plug-in is, for messages ("prefix method", "layout")
        self.reserved = reserved  # names with another meaning (a layout may not be called "auto")

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available by its ``name``."""
        if not cls.name or cls.name in self.reserved:
            other = f" other than {', '.join(map(repr, self.reserved))}" if self.reserved else ""
            raise TypeError(f"{cls.__name__} must set a name{other}")
        if cls.name in self and self[cls.name] is not cls:
            raise TypeError(f"{self.kind} {cls.name!r} is registered twice "
                            f"({self[cls.name].__qualname__} and {cls.__qualname__})")
        self[cls.name] = cls
        return cls
