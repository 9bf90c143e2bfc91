"""Prompt sets: bundled contrast sets and user JSONL/CSV files, rendered for a model.

Row formats (JSONL; CSV takes the same column names except ``messages``):

- ``{"text": ..., "label": ...}``: a user prompt. The model's chat template is applied with
  ``add_generation_prompt=True`` exactly as ``tokenizer.apply_chat_template`` renders it.
- ``{"messages": [{"role": ..., "content": ...}, ...], "label": ...}``: a chat. When the last
  message is the assistant's it is rendered as an unfinished response (no end-of-turn token).
- ``{"prompt": ..., "response": ..., "label": ...}``: shorthand for a user/assistant chat.

Optional keys: ``pair`` (rows sharing it form a contrast pair or group), anything else is kept as
provenance. Labels may be strings or integers; the set keeps the name of each label index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError

BUNDLED = ("harmful-harmless", "honesty", "control")
# Names that read as the reference ("negative") class come first so index 0 is the safe side.
_REFERENCE_NAMES = ("harmless", "safe", "honest", "benign", "control", "negative", "truthful", "useful")


@dataclass(frozen=True)
class Prompt:
    """One dataset row, normalised to a chat (``messages``) or plain text."""

    messages: tuple[tuple[str, str], ...]
    label: int
    pair: int = -1
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ends_with_assistant(self) -> bool:
        return bool(self.messages) and self.messages[-1][0] == "assistant"


@dataclass(frozen=True)
class Rendered:
    """A prompt as fed to the model: the text, its token ids and the final message's token span."""

    text: str
    token_ids: list[int]
    span: tuple[int, int]  # [start, end) token indices of the final message's content


@dataclass
class PromptSet:
    name: str
    prompts: list[Prompt]
    label_names: list[str]
    sha256: str
    path: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.label for p in self.prompts], dtype=np.int64)

    @property
    def pair_ids(self) -> np.ndarray:
        return np.array([p.pair for p in self.prompts], dtype=np.int64)

    def subset(self, limit: int | None, seed: int = 0) -> PromptSet:
        """A stratified subset of at most ``limit`` rows (pairs kept whole), in file order."""
        if limit is None or limit >= len(self.prompts):
            return self
        if limit < 1:
            raise GeomprobeError(f"--limit must be at least 1, got {limit}")
        rng = np.random.default_rng(seed)
        # Group rows: a pair is one unit, an unpaired row is its own unit; stratify units by label.
        units: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.prompts):
            key = ("pair", p.pair) if p.pair >= 0 else ("row", i)
            units.setdefault(key, []).append(i)
        by_label: dict[int, list[list[int]]] = {}
        for rows in units.values():
            by_label.setdefault(self.prompts[rows[0]].label, []).append(rows)
        unit_size = max(1, round(np.mean([len(r) for r in units.values()])))
        total_units = sum(len(v) for v in by_label.values())
        want_units = max(1, limit // unit_size)
        # Largest-remainder allocation so the strata add up to exactly the units asked for.
        labels = sorted(by_label)
        quotas = np.array([want_units * len(by_label[k]) / total_units for k in labels])
        take = np.floor(quotas).astype(int)
        for k in np.argsort(-(quotas - take), kind="stable")[: want_units - take.sum()]:
            take[k] += 1
        chosen: list[int] = []
        for label, n_take in zip(labels, take):
            groups = by_label[label]
            for g in rng.permutation(len(groups))[: max(1, n_take)]:
                chosen.extend(groups[g])
        chosen = sorted(chosen)
        return PromptSet(self.name, [self.prompts[i] for i in chosen], self.label_names, self.sha256, self.path)

    def render(self, tokenizer: Any, chat_template: bool = True) -> list[Rendered]:
        return [render_prompt(p, tokenizer, chat_template) for p in self.prompts]


def _label_order(values: list[Any]) -> list[Any]:
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return sorted(set(values))
    names = sorted({str(v) for v in values}, key=lambda s: (s.lower() not in _REFERENCE_NAMES, s))
    return names


def _row_to_prompt(row: Any, where: str) -> tuple[tuple[tuple[str, str], ...], Any, int]:
    if not isinstance(row, dict):
        raise GeomprobeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise GeomprobeError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
        chat = tuple((m["role"], m["content"]) for m in messages)
    elif "prompt" in row and "response" in row:
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise GeomprobeError(f"{where}: 'prompt' and 'response' must be strings")
        chat = (("user", row["prompt"]), ("assistant", row["response"]))
    elif "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise GeomprobeError(f"{where}: 'text' must be a non-empty string")
        chat = (("user", row["text"]),)
    else:
        raise GeomprobeError(f"{where}: row needs 'text', 'messages' or 'prompt'+'response' (keys: {sorted(row)})")
    label = row.get("label")
    if label is not None and not isinstance(label, (str, int)) or isinstance(label, bool):
        raise GeomprobeError(f"{where}: 'label' must be a string or an integer, got {label!r}")
    pair = row.get("pair", -1)
    try:
        pair = int(pair) if pair not in (None, "") else -1
    except (TypeError, ValueError):
        raise GeomprobeError(f"{where}: 'pair' must be an integer, got {pair!r}") from None
    return chat, label, pair


def _read_rows(path: Path, data: bytes) -> list[tuple[dict, str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeomprobeError(f"{path} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    rows: list[tuple[dict, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise GeomprobeError(f"{path} is empty; it needs a header row such as text,label")
        for n, row in enumerate(reader, start=2):
            clean = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if "label" in clean and clean["label"].lstrip("-").isdigit():
                clean["label"] = int(clean["label"])
            rows.append((clean, f"{path}:{n}"))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{path}:{n}"))
            except json.JSONDecodeError as exc:
                raise GeomprobeError(f"{path} line {n} is not valid JSON ({exc.msg}); fix or remove that line") from None
    if not rows:
        raise GeomprobeError(f"{path} has no rows; give at least one prompt")
    return rows


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("geomprobe") / "data" / f"{name}.jsonl"))


def load_prompt_set(source: str | Path, limit: int | None = None, seed: int = 0) -> PromptSet:
    """Load a bundled set by name (``harmful-harmless``, ``honesty``, ``control``) or a JSONL/CSV file."""
    text = str(source)
    if text in BUNDLED:
        path, name = bundled_path(text), text
    else:
        path, name = Path(text), Path(text).stem
        if path.is_dir():
            raise GeomprobeError(f"dataset {text!r} is a directory; pass a .jsonl or .csv file")
        if not path.exists():
            hint = f"a bundled name ({', '.join(BUNDLED)})"
            raise GeomprobeError(f"dataset {text!r} is neither {hint} nor an existing file; check the name or path")
        if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
            raise GeomprobeError(f"dataset {text!r} must be .jsonl or .csv")
    data = path.read_bytes()
    rows = _read_rows(path, data)
    parsed = [(_row_to_prompt(row, where), row) for row, where in rows]
    raw_labels = [label for (_, label, _), _ in parsed]
    has_label = [label is not None for label in raw_labels]
    if any(has_label) and not all(has_label):
        first = rows[has_label.index(False)][1]
        raise GeomprobeError(f"{first}: row has no 'label' while others do; label every row or none")
    if any(isinstance(v, str) for v in raw_labels) and any(isinstance(v, int) for v in raw_labels):
        raw_labels = [None if v is None else str(v) for v in raw_labels]
    order = _label_order([v for v in raw_labels if v is not None]) if any(has_label) else []
    index = {v: i for i, v in enumerate(order)}
    prompts = [
        Prompt(chat, index[label] if label is not None else -1, pair, row)
        for ((chat, _, pair), row), label in zip(parsed, raw_labels)
    ]
    prompt_set = PromptSet(name, prompts, [str(v) for v in order], hashlib.sha256(data).hexdigest(), str(path))
    return prompt_set.subset(limit, seed)


def prompts_from_texts(texts: Sequence[str], labels: Sequence[Any] | None = None, name: str = "inline") -> PromptSet:
    """Build a prompt set from user prompts held in memory."""
    rows = [{"text": t} if labels is None else {"text": t, "label": lab} for t, lab in zip(texts, labels or texts)]
    order = _label_order(list(labels)) if labels is not None else []
    index = {v: i for i, v in enumerate(order)}
    prompts = [
        Prompt((("user", r["text"]),), index[r["label"]] if labels is not None else -1, -1, r) for r in rows
    ]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return PromptSet(name, prompts, [str(v) for v in order], digest)


def render_prompt(prompt: Prompt, tokenizer: Any, chat_template: bool = True) -> Rendered:
    """Render a prompt to text and token ids, and find the final message's content tokens."""
    final = prompt.messages[-1][1]
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": role, "content": content} for role, content in prompt.messages]
        if prompt.ends_with_assistant:
            text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
        else:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        add_special = False  # the template already holds its special tokens
    else:
        text = "\n".join(content for _, content in prompt.messages)
        add_special = True
    char_start = text.rfind(final)
    if char_start < 0:  # a template that rewrites content; fall back to the whole text
        char_start, char_end = 0, len(text)
    else:
        char_end = char_start + len(final)
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > char_start and a < char_end and b > a]
    span = (inside[0], inside[-1] + 1) if inside else (0, len(ids))
    return Rendered(text, ids, span)
