"""Preference pairs ``{prompt, chosen, rejected}``: reading, checking and rendering them for a model.

Every check runs before a model is loaded, and a failure is one line naming the row and the fix:
a row that is not a JSON object, lacks one of the three keys or holds a non-string there, an
empty (or whitespace-only) text, a chosen response equal to its rejected one (the pair states no
preference and its CHES is 0 by construction), NUL characters or lone surrogates. Other keys are
kept as provenance (the bundled set records ``kind`` and ``topic``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.activations.datasets import Prompt, Rendered, bundled_path, render_prompt
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import check_json_strings

BUNDLED_PREFERENCES = ("preferences",)
FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One row: a user prompt, the preferred response (``chosen``) and the dispreferred one (``rejected``)."""

    prompt: str
    chosen: str
    rejected: str
    where: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class PreferenceSet:
    name: str
    pairs: list[PreferencePair]
    sha256: str
    path: str = ""

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, limit: int | None) -> PreferenceSet:
        """At most ``limit`` pairs spread evenly over the file, in file order (deterministic, no seed)."""
        if limit is None or limit >= len(self.pairs):
            return self
        if limit < 1:
            raise GeomprobeError(f"--limit must be at least 1, got {limit}")
        # Evenly spaced rows, so a short run sees every kind of pair a sorted file holds.
        chosen = np.linspace(0, len(self.pairs) - 1, limit).round().astype(int)
        return PreferenceSet(self.name, [self.pairs[i] for i in chosen], self.sha256, self.path)


def check_pair_row(row: Any, where: str) -> PreferencePair:
    """A parsed JSON row as a :class:`PreferencePair`, or one error line naming the problem."""
    if not isinstance(row, dict):
        raise GeomprobeError(f"{where}: expected a JSON object with prompt, chosen and rejected, got {type(row).__name__}")
    check_json_strings(row, where)
    for key in FIELDS:
        if key not in row:
            raise GeomprobeError(
                f"{where}: row lacks {key!r}; every row needs prompt, chosen and rejected strings (keys: {sorted(row)})"
            )
        if not isinstance(row[key], str):
            raise GeomprobeError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
        if not row[key].strip():
            raise GeomprobeError(f"{where}: {key!r} is empty; give it text or remove the row")
    if row["chosen"].strip() == row["rejected"].strip():
        raise GeomprobeError(
            f"{where}: 'chosen' equals 'rejected', so the pair states no preference (its CHES is 0 by construction); "
            "fix or remove the row"
        )
    extra = {k: v for k, v in row.items() if k not in FIELDS}
    return PreferencePair(row["prompt"], row["chosen"], row["rejected"], where, extra)


def load_preferences(source: str | Path, limit: int | None = None) -> PreferenceSet:
    """Read a bundled set by name (``preferences``) or a JSONL file of ``{prompt, chosen, rejected}`` rows."""
    text = str(source)
    if text in BUNDLED_PREFERENCES:
        path, name = bundled_path(text), text
    else:
        path, name = Path(text), Path(text).stem
        if path.is_dir():
            raise GeomprobeError(f"preference file {text!r} is a directory; pass a .jsonl file")
        if not path.is_file():
            raise GeomprobeError(
                f"preference file {text!r} is neither a bundled name ({', '.join(BUNDLED_PREFERENCES)}) nor an existing "
                "file; check the name or path"
            )
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise GeomprobeError(f"{path} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    pairs = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GeomprobeError(f"{path} line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
        pairs.append(check_pair_row(row, f"{path}:{n}"))
    if not pairs:
        raise GeomprobeError(f"{path} has no rows; give at least one {{prompt, chosen, rejected}} row")
    return PreferenceSet(name, pairs, hashlib.sha256(data).hexdigest(), str(path)).subset(limit)


def pairs_from_rows(rows: list[dict[str, Any]], name: str = "inline") -> PreferenceSet:
    """A preference set from rows held in memory (checked like a file's rows)."""
    pairs = [check_pair_row(row, f"row {i + 1}") for i, row in enumerate(rows)]
    if not pairs:
        raise GeomprobeError("no preference rows given; pass at least one {prompt, chosen, rejected} row")
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return PreferenceSet(name, pairs, digest)


def render_response(prompt: str, response: str, tokenizer: Any, chat: bool, where: str) -> Rendered:
    """``(prompt, response)`` as the user turn and an unfinished assistant turn; ``span`` holds the response's tokens.

    The text ends where the response ends (no end-of-turn token): the state at the response's last
    token is what predicts the end of the turn, and it does not depend on what follows.
    """
    return render_prompt(Prompt((("user", prompt), ("assistant", response)), -1, where=where), tokenizer, chat)
