"""argparse options whose defaults are the library's (issue 23: every default lives in
the config dataclasses; a command line only parses and calls).

An option the user leaves out keeps a `LibraryDefault` marker; `given()` drops those, so
the config dataclass fills in its own default. The marker's str() is what --help shows,
read from the dataclass only when help is printed, so building a parser stays cheap and
imports nothing heavy. Standard library only.
"""
from __future__ import annotations

import importlib
from dataclasses import MISSING


class LibraryDefault:
    """An option left out: the library's config dataclass decides its value."""

    def __init__(self, describe) -> None:
        self._describe = describe

    def __str__(self) -> str:
        try:
            return str(self._describe())
        except ImportError:       # the extra that holds the config is not installed
            return "the library's"

    __repr__ = __str__


def field_default(cls, name: str):
    """The default of a dataclass field (its factory's value for mutable ones)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default is MISSING else f.default


def library(where: str, name: str, show=None) -> LibraryDefault:
    """The default of field `name` of the dataclass at `where` ("module:Class"), shown
    as is or through `show(value)`."""
    def describe():
        module, cls = where.split(":")
        value = field_default(getattr(importlib.import_module(module), cls), name)
        return show(value) if show is not None else value
    return LibraryDefault(describe)


def given(args, fields: dict[str, str]) -> dict:
    """{config field: value} for the options (dest -> field) the user gave."""
    return {field: getattr(args, dest) for dest, field in fields.items()
            if not isinstance(getattr(args, dest), LibraryDefault)}


def is_default(value) -> bool:
    return isinstance(value, LibraryDefault)
