"""One validation layer for what geomprobe reads back: JSON sidecars, HDF5 attributes, dataset text.

Files we wrote ourselves can still be edited, truncated or forged, so every field is checked for
its type and range before use, and a failure is one :class:`GeomprobeError` line naming the file,
the field and the fix (``"probe.json is damaged: 'd_model' must be an integer >= 1, got '3'"``).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError

_MISSING = object()
# A UTF-16 surrogate on its own is not a character: UTF-8 (HDF5, tokenizers, JSON files) cannot encode it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Fields:
    """Typed access to a mapping (a JSON sidecar or HDF5 attributes) whose problems read as damage.

    ``where`` names the file ("'probe/probe.json'"), ``fix`` says how to remake it; every error reads
    ``"<where> is damaged: <problem>; <fix>"``.
    """

    def __init__(self, values: Mapping[str, Any], where: str, fix: str) -> None:
        self.values = values
        self.where = where
        self.fix = fix

    def damaged(self, problem: str) -> GeomprobeError:
        return GeomprobeError(f"{self.where} is damaged: {problem}; {self.fix}")

    def _get(self, key: str, default: Any) -> Any:
        value = self.values.get(key, _MISSING) if hasattr(self.values, "get") else _MISSING
        if value is _MISSING or (value is None and default is not _MISSING):
            if default is _MISSING:
                raise self.damaged(f"it lacks {key!r}")
            return default
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise self.damaged(f"{key!r} is not UTF-8 text") from None
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer (a bool, float or string such as "3" is refused: it was not written by us)."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.damaged(f"{key!r} must be an integer, got {_shown(value)}")
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self.damaged(f"{key!r} must be {bounds}, got {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, bool):
            raise self.damaged(f"{key!r} must be true or false, got {_shown(value)}")
        return value

    def text(self, key: str, default: Any = _MISSING, choices: Iterable[str] | None = None) -> str:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.damaged(f"{key!r} must be a string, got {_shown(value)}")
        if choices is not None and value not in (allowed := list(choices)):
            raise self.damaged(f"{key!r} is {value!r}, not one of {', '.join(allowed)}")
        return value

    def string_list(
        self, key: str, default: Any = _MISSING, *, as_json: bool = False, non_empty: bool = False, unique: bool = False
    ) -> list[str]:
        """A list of strings; ``as_json``: stored as a JSON text (how HDF5 attributes keep lists);
        ``unique``: no name twice (label names index classes, so a repeat would swap or merge them)."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if as_json:
            if not isinstance(value, str):
                raise self.damaged(f"{key!r} must be a JSON list in a string, got {_shown(value)}")
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise self.damaged(f"{key!r} is not valid JSON") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.damaged(f"{key!r} must be a list of strings, got {_shown(value)}")
        if non_empty and not value:
            raise self.damaged(f"{key!r} is an empty list")
        if unique:
            repeated = first_repeat(value)
            if repeated is not None:
                raise self.damaged(f"{key!r} names {repeated!r} twice; names must be unique")
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, dict):
            raise self.damaged(f"{key!r} must be a JSON object, got {_shown(value)}")
        return value

    def optional(self, key: str, read: Callable[..., Any]) -> Any:
        """``read(key)`` where the value is present and not null, else None."""
        if self._get(key, None) is None:
            return None
        return read(key)


def first_repeat(names: Iterable[Any]) -> Any:
    """The first item that occurs twice in ``names``, or None."""
    seen: set[Any] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def check_unique_names(names: Iterable[Any], what: str = "label names") -> None:
    """Refuse a repeated name: label codes index the list, so a repeat would swap or merge two classes."""
    repeated = first_repeat(names)
    if repeated is not None:
        raise GeomprobeError(f"{what} hold {str(repeated)!r} twice; give each class one unique name")


# -- JSON text: the one parser, its limits as one line -----------------------------------------------
def parse_json(text: str | bytes, where: str, fix: str = "fix or remove it") -> Any:
    """``json.loads`` whose failures are one :class:`GeomprobeError` naming ``where`` and ``fix``.

    Besides malformed text this covers the parser's limits: nesting deeper than Python's recursion
    limit (RecursionError) and integers longer than its digit limit (a ValueError that is not a
    JSONDecodeError), both tracebacks before.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeomprobeError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {fix}") from None
    except RecursionError:
        raise GeomprobeError(f"{where} is nested too deeply to parse (JSON arrays/objects inside each other); {fix}") from None
    except UnicodeDecodeError:
        raise GeomprobeError(f"{where} is not UTF-8 text; re-save it as UTF-8") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        if "digits" in str(exc):
            problem = f"an integer longer than Python's limit of {sys.get_int_max_str_digits()} digits"
        else:
            problem = f"a value Python cannot read ({' '.join(str(exc).split())[:100]})"
        raise GeomprobeError(f"{where} holds {problem}; {fix}") from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of JSON Lines text, split at ``\n`` only (a trailing ``\r`` dropped).

    ``str.splitlines`` also splits at U+2028, U+2029, U+0085 and other characters that JSON allows
    raw inside strings (``json.dumps(ensure_ascii=False)`` writes them so), which cut valid rows in
    two. JSON strings cannot hold a raw ``\n`` or ``\r``, so splitting there is exact. Blank
    lines are skipped.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_text(value: str, where: str) -> None:
    """Refuse text that HDF5 or a tokenizer cannot take: NUL characters and lone surrogates.

    Other control characters (tab, escape, ...) are valid UTF-8 and are stored as given.
    """
    if "\x00" in value:
        raise GeomprobeError(
            f"{where} holds a NUL character (\\u0000) at position {value.index(chr(0))}, which HDF5 text cannot store; "
            "remove it from the dataset"
        )
    match = _SURROGATE.search(value)
    if match:
        raise GeomprobeError(
            f"{where} holds a lone UTF-16 surrogate (\\u{ord(match.group()):04x}) at position {match.start()}, which is "
            "not valid Unicode; fix that text in the dataset"
        )


def check_json_strings(value: Any, where: str) -> None:
    """:func:`check_text` on every string (keys included) inside a parsed JSON value."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), where)
            check_json_strings(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_json_strings(item, where)


def sha256_of_array(values: np.ndarray) -> str:
    """SHA-256 of an integer array as little-endian int64 (independent of how it was stored)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<i8").tobytes()).hexdigest()


def sha256_of_texts(texts: Iterable[str | bytes]) -> str:
    """SHA-256 over texts as UTF-8, each preceded by its byte length (so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
