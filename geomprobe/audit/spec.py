"""Declaring audit fields once: docs on dataclass fields, and the schema rows made from them.

A section's sizes, settings and results are dataclasses whose fields carry their meaning
(:func:`doc`, :func:`size`); :func:`type_rows` turns a dataclass (or ``list``/``dict`` of one)
into the metrics.json schema rows ``(dotted path, type, meaning)``, with the type read from the
annotation. So each field is written once: the dataclass is the schema.

Types: ``int`` -> integer, ``float`` -> number (null when undefined or infinite), ``str`` ->
string, ``bool`` -> bool, a dataclass or ``dict`` -> object, ``list[X]`` -> ``list[X]``;
``X | None`` adds ``|null`` (numbers are nullable already). ``[]`` in a path marks the items of
a list of objects, ``*`` the free keys of a dict.
"""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any

# One schema row: (dotted path, type, meaning).
FieldSpec = tuple[str, str, str]

_SCALARS: dict[Any, str] = {bool: "bool", int: "integer", float: "number", str: "string", Path: "string"}


def doc(text: str, *, default: Any = MISSING, type: str | None = None, items: tuple[Any, ...] = ()) -> Any:
    """A documented dataclass field: ``text`` is its meaning in the schema. ``type`` overrides the
    type read from the annotation; ``items`` documents the values of a ``dict`` field, level by level
    (a ``(meaning, type)`` pair where the annotation says ``Any``)."""
    metadata = {"doc": text, "type": type, "items": items}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def size(full: Any, quick: Any = MISSING, *, doc: str) -> Any:
    """A sizes field: ``full`` is the default audit's value, ``quick`` the ``--quick`` one (same if omitted)."""
    return field(default=full, metadata={"doc": doc, "quick": full if quick is MISSING else quick})


def internal(default: Any = None) -> Any:
    """A result field kept for later sections and plots but not written to metrics.json."""
    return field(default=default, repr=False, compare=False, metadata={"internal": True})


def quick_sizes(cls: type) -> Any:
    """``cls`` with every :func:`size` field at its quick value."""
    return cls(**{f.name: f.metadata["quick"] for f in fields(cls) if "quick" in f.metadata})


def _optional(tp: Any) -> tuple[Any, bool]:
    """(``X``, True) for ``X | None``; (``tp``, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def kind_of(tp: Any) -> str:
    """The schema type of annotation ``tp``."""
    inner, nullable = _optional(tp)
    origin = typing.get_origin(inner)
    if inner in _SCALARS:
        kind = _SCALARS[inner]
    elif is_dataclass(inner) or origin is dict or inner is dict:
        kind = "object"
    elif origin in (list, tuple):
        kind = f"list[{kind_of(typing.get_args(inner)[0]).removesuffix('|null')}]"
    else:
        raise TypeError(f"no schema type for {tp!r}; pass doc(..., type=...)")
    return kind + "|null" if nullable and kind != "number" else kind


def dataclass_rows(cls: type, path: str) -> list[FieldSpec]:
    """Rows of every documented field of dataclass ``cls`` under ``path`` (internal fields left out)."""
    hints = typing.get_type_hints(cls)
    rows: list[FieldSpec] = []
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        if "doc" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no doc(...); every metrics.json field says what it means")
        rows += type_rows(
            hints[f.name], f"{path}.{f.name}", f.metadata["doc"], f.metadata.get("type"), f.metadata.get("items", ())
        )
    return rows


def type_rows(tp: Any, path: str, text: str, kind: str | None = None, items: tuple[Any, ...] = ()) -> list[FieldSpec]:
    """The row of ``path`` (annotation ``tp``, meaning ``text``) and the rows of everything under it."""
    rows: list[FieldSpec] = [(path, kind or kind_of(tp), text)]
    inner, _ = _optional(tp)
    origin = typing.get_origin(inner)
    if is_dataclass(inner) and isinstance(inner, type):
        rows += dataclass_rows(inner, path)
    elif origin in (list, tuple):
        item, _ = _optional(typing.get_args(inner)[0])
        if is_dataclass(item) and isinstance(item, type):
            rows += dataclass_rows(item, path + "[]")
    elif origin is dict:
        if not items:
            raise TypeError(f"{path} is a dict: document its values with doc(..., items=(...))")
        item_text, item_kind = items[0] if isinstance(items[0], tuple) else (items[0], None)
        rows += type_rows(typing.get_args(inner)[1], path + ".*", item_text, item_kind, items[1:])
    return rows
