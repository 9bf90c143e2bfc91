"""Prompt sets: bundled contrast sets and user JSONL/CSV files, rendered for a model.

Row formats (JSONL; CSV takes the same column names except ``messages``):

- ``{"text": ..., "label": ...}``: a user prompt. The model's chat template is applied with
  ``add_generation_prompt=True`` exactly as ``tokenizer.apply_chat_template`` renders it.
- ``{"messages": [{"role": ..., "content": ...}, ...], "label": ...}``: a chat. When the last
  message is the assistant's it is rendered as an unfinished response (no end-of-turn token).
- ``{"prompt": ..., "response": ..., "label": ...}``: shorthand for a user/assistant chat.

Optional keys: ``pair`` (rows sharing it form a contrast pair or group), anything else is kept as
provenance. Labels may be strings or integers; the set keeps the name of each label index.

Text policy (checked on load, each failure names the row):

- NUL characters and lone UTF-16 surrogates (``"\\ud800"`` in JSON) are refused anywhere in a row:
  HDF5 text cannot hold NUL and neither can be encoded as UTF-8 for the tokenizer. Other control
  characters (tab, escape, form feed, ...) are valid text and are fed to the model as given.
- The final message must render to at least one token (an empty response has nothing to pool):
  to read the state before a response, end the chat with the user's message instead.
- Prompts longer than the model's context are refused before the model runs (the error names the
  row, its length and the limit) unless ``truncate`` is ``"left"`` (keep the end: the final message
  and generation prompt) or ``"right"`` (keep the start); see :func:`fit_to_context`.

The final message's token span is found by rendering the chat twice more with two sentinel
contents: what the renders share before and after the sentinel is the template around the final
message, so the message is located by position, never by searching for its text (which fails for a
message such as "assistant" or one that also occurs earlier in the chat).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import check_regular_file
from geomprobe.core.validate import check_json_strings, check_text, jsonl_lines, parse_json

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
    where: str = field(default="", compare=False)  # "file.jsonl:12" or "row 3", for error messages

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

    def where(self, i: int) -> str:
        """Where row ``i`` came from, for error messages."""
        return self.prompts[i].where or f"row {i + 1} of {self.name}"


def _label_order(values: list[Any]) -> list[Any]:
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return sorted(set(values))
    names = sorted({str(v) for v in values}, key=lambda s: (s.lower() not in _REFERENCE_NAMES, s))
    return names


def _row_to_prompt(row: Any, where: str) -> tuple[tuple[tuple[str, str], ...], Any, int]:
    if not isinstance(row, dict):
        raise GeomprobeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    check_json_strings(row, where)
    if "messages" in row:
        messages = row["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
            )
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
        # Long prompts are legitimate: lift the csv module's 128 KiB field limit to the file's size.
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
        reader = csv.DictReader(io.StringIO(text))
        try:
            if not reader.fieldnames:
                raise GeomprobeError(f"{path} is empty; it needs a header row such as text,label")
            for row in reader:
                clean = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
                if "label" in clean and isinstance(clean["label"], str) and clean["label"].lstrip("-").isdigit():
                    clean["label"] = int(clean["label"])
                rows.append((clean, f"{path}:{reader.line_num}"))
        except csv.Error as exc:
            raise GeomprobeError(f"{path} line {reader.line_num} is not valid CSV ({exc}); fix that line") from None
    else:
        for n, line in jsonl_lines(text):
            rows.append((parse_json(line, f"{path} line {n}", "fix or remove that line"), f"{path}:{n}"))
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
    data = check_regular_file(path, "dataset").read_bytes()  # a FIFO or device would never end
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
        Prompt(chat, index[label] if label is not None else -1, pair, row, where)
        for ((chat, _, pair), row), label, (_, where) in zip(parsed, raw_labels, rows)
    ]
    prompt_set = PromptSet(name, prompts, [str(v) for v in order], hashlib.sha256(data).hexdigest(), str(path))
    return prompt_set.subset(limit, seed)


def prompts_from_texts(texts: Sequence[str], labels: Sequence[Any] | None = None, name: str = "inline") -> PromptSet:
    """Build a prompt set from user prompts held in memory."""
    texts = list(texts)
    if labels is not None and len(labels) != len(texts):
        raise GeomprobeError(f"{len(labels)} labels for {len(texts)} prompts; give one label per prompt")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise GeomprobeError(f"prompt {i + 1} must be a non-empty string, got {text!r}")
        check_text(text, f"prompt {i + 1}")
    rows = [{"text": t} if labels is None else {"text": t, "label": lab} for t, lab in zip(texts, labels or texts)]
    order = _label_order(list(labels)) if labels is not None else []
    index = {v: i for i, v in enumerate(order)}
    prompts = [
        Prompt((("user", r["text"]),), index[r["label"]] if labels is not None else -1, -1, r, f"prompt {i + 1}")
        for i, r in enumerate(rows)
    ]
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return PromptSet(name, prompts, [str(v) for v in order], digest)


# Two contents that differ in their first and last characters and occur in no template: whatever
# two renders with them share before and after is the template around the final message.
_SENTINELS = ("\ue000geomprobe-a\ue001", "\ue002geomprobe-b\ue003")


def _final_message_chars(prompt: Prompt, tokenizer: Any, text: str, where: str) -> tuple[int, int]:
    """``[start, end)`` characters of ``text`` (the rendered chat) that the final message's content fills."""
    from geomprobe.models.generation import render_chat

    head = prompt.messages[:-1]
    role = prompt.messages[-1][0]
    first, second = (
        render_chat(tokenizer, [*head, (role, s)], continue_final=prompt.ends_with_assistant, where=where) for s in _SENTINELS
    )
    prefix = len(_common_prefix(first, second))
    suffix = len(_common_prefix(first[::-1], second[::-1]))
    before, after = first[:prefix], first[len(first) - suffix :]
    if (
        first[prefix : len(first) - suffix] != _SENTINELS[0]
        or not text.startswith(before)
        or not text.endswith(after)
        or len(text) < prefix + suffix
    ):
        raise GeomprobeError(
            f"{where}: the chat template does not place the final message as one piece of text, so its tokens "
            "cannot be located; pass --no-chat-template (chat_template=False)"
        )
    return prefix, len(text) - suffix


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def render_prompt(prompt: Prompt, tokenizer: Any, chat_template: bool = True) -> Rendered:
    """Render a prompt to text and token ids, and find the final message's content tokens.

    The span holds every token that covers a character of the final message's content as the
    template renders it (a token straddling its edge counts). An empty final message is an error.
    """
    from geomprobe.models.generation import render_chat

    where = prompt.where or "a prompt"
    final = prompt.messages[-1][1]
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = render_chat(tokenizer, prompt.messages, continue_final=prompt.ends_with_assistant, where=where)
        char_start, char_end = _final_message_chars(prompt, tokenizer, text, where)
        add_special = False  # the template already holds its special tokens
    else:
        text = "\n".join(content for _, content in prompt.messages)
        char_start, char_end = len(text) - len(final), len(text)
        add_special = True
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = enc["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > char_start and a < char_end and b > a]
    if not inside:
        raise GeomprobeError(
            f"{where}: the final message is empty, so it has no tokens to pool; give it text, or end the chat "
            "with the user's message to read the state before a response"
        )
    return Rendered(text, ids, (inside[0], inside[-1] + 1))


TRUNCATE_SIDES = ("left", "right")


@dataclass(frozen=True)
class ContextFit:
    """What :func:`fit_to_context` did: the rows it shortened and the tokens it dropped."""

    rendered: list[Rendered]
    limit: int | None
    truncate: str | None
    truncated_rows: int = 0
    dropped_tokens: int = 0

    def provenance(self) -> dict[str, Any]:
        return {
            "context_limit": -1 if self.limit is None else self.limit,
            "truncate": self.truncate or "none",
            "truncated_rows": self.truncated_rows,
            "truncated_tokens": self.dropped_tokens,
        }


def fit_to_context(
    rendered: Sequence[Rendered], limit: int | None, truncate: str | None, where: Callable[[int], str]
) -> ContextFit:
    """Check every row fits ``limit`` tokens before the model runs; shorten rows if asked.

    ``truncate=None`` refuses the first row that is too long (naming it, its length and the limit);
    ``"left"`` drops tokens from the start (keeps the final message and the generation prompt, so
    ``last`` pooling reads the same position), ``"right"`` drops them from the end. A row whose final
    message would lose every token is refused either way. ``where(i)`` names row ``i``.
    """
    if truncate is not None and truncate not in TRUNCATE_SIDES:
        raise GeomprobeError(f"--truncate must be left or right, got {truncate!r}")
    if limit is None or limit < 1:
        return ContextFit(list(rendered), None, truncate)
    out: list[Rendered] = []
    rows = dropped = 0
    for i, r in enumerate(rendered):
        n = len(r.token_ids)
        if n <= limit:
            out.append(r)
            continue
        if truncate is None:
            raise GeomprobeError(
                f"{where(i)} has {n} tokens, more than the model's context of {limit}; shorten it, or pass "
                "--truncate left (keep the end) or --truncate right (keep the start)"
            )
        cut = n - limit
        start = cut if truncate == "left" else 0
        span = (max(r.span[0] - start, 0), min(r.span[1] - start, limit))
        if span[0] >= span[1]:
            raise GeomprobeError(
                f"{where(i)}: truncating its {n} tokens to {limit} from the {truncate} removes the whole final "
                "message; shorten the row" + (" or use --truncate left" if truncate == "right" else "")
            )
        out.append(Rendered(r.text, r.token_ids[start : start + limit], span))
        rows += 1
        dropped += cut
    return ContextFit(out, limit, truncate, rows, dropped)
