"""Questions with known short answers, and the matcher that grades a model's answer to one.

A question row (JSONL, the bundled ``geomprobe/data/questions.jsonl`` or a user file)::

    {"id": "capital-france", "category": "capital", "question": "What is the capital city of France?",
     "answer": "Paris", "aliases": ["..."], "wrong": ["Lyon", "Marseille"]}

``question`` and ``answer`` are required; ``id`` defaults to ``q<line>``, ``category`` to
``general``. A question is *numeric* when its answer is a number (``"12"``, ``"1945"``).

The matcher (:class:`AnswerGrader`) gives ``true``, ``false`` or ``unclear``:

1. Both texts are normalised: accents dropped, lower case, punctuation to spaces, ``1,000`` to
   ``1000``, number words to digits (``twenty-one`` -> ``21``, ``one hundred and five`` -> ``105``).
   A leading ``the``/``a``/``an`` of an answer or alias is ignored.
2. Empty answer -> ``unclear`` (``empty``); a refusal or hedge (``sorry``, ``I cannot``, ``I don't
   know``, ``maybe``, ``I think``, ...) -> ``unclear`` (``hedge``).
3. A phrase counts as *stated* when it occurs in the answer more often than in the question, so
   echoing the question ("The opposite of hot is ...") states nothing.
4. Correct: the answer or an alias is stated (numeric questions: that number is stated).
   Wrong: a known wrong answer is stated outside the correct span: the row's ``wrong`` list, the
   accepted answers of every other question in the same category (another capital, another
   colour), and for numeric questions any other number.
5. A negation (``not``, ``no``, ``never``, ``isn't``, ...) next to a correct or wrong statement ->
   ``unclear`` (``negation``): "It is not Paris" is neither a true nor a false answer we can read.
6. Correct and wrong -> ``unclear`` (``both``); correct only -> ``true``; wrong only -> ``false``;
   neither -> ``unclear`` (``no-known-answer``: a wrong answer we have no list for, or a
   non-answer such as "False." or a truncated sentence).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import jsonl_lines, parse_json

GRADES = ("true", "false", "unclear")

_SMALL = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 1000, "million": 1_000_000}
_ARTICLES = ("the", "a", "an")
_NEGATIONS = frozenset(
    {"not", "no", "never", "isn", "aren", "wasn", "weren", "doesn", "don", "didn", "cannot", "neither", "nor", "none", "nothing"}
)
_HEDGES = (
    "sorry",
    "i cannot",
    "i can t",
    "i can not",
    "i don t know",
    "i do not know",
    "not sure",
    "as an ai",
    "unable to",
    "i won t",
    "i will not",
    "i m not able",
    "i am not able",
    "maybe",
    "perhaps",
    "possibly",
    "probably",
    "might be",
    "could be",
    "i think",
    "i believe",
    "i guess",
    "not certain",
    "it depends",
)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def _number_words(words: list[str]) -> list[str]:
    """Replace runs of English number words by their digits; other words pass through."""
    out: list[str] = []
    total, current, last = 0, 0, None  # last: kind of the previous number word, None outside a run

    def flush() -> None:
        nonlocal total, current, last
        if last is not None:
            out.append(str(total + current))
        total, current, last = 0, 0, None

    for i, w in enumerate(words):
        if w in _SMALL:
            if last in ("small", "tens") and not (last == "tens" and _SMALL[w] < 10):
                flush()
            current += _SMALL[w]
            last = "small"
        elif w in _TENS:
            if last in ("small", "tens"):
                flush()
            current += _TENS[w]
            last = "tens"
        elif w == "hundred" and last in ("small", "tens"):
            current *= 100
            last = "hundred"
        elif w in _SCALES and last is not None:
            total += current * _SCALES[w]
            current, last = 0, "scale"
        elif (
            w == "and"
            and last in ("hundred", "scale")
            and i + 1 < len(words)
            and (words[i + 1] in _SMALL or words[i + 1] in _TENS)
        ):
            continue  # "one hundred and five"
        else:
            flush()
            out.append(w)
    flush()
    return out


def normalize(text: str) -> list[str]:
    """Tokens of ``text`` after the matcher's normalisation (see the module docstring)."""
    folded = re.sub(r"(?<=\d),(?=\d{3}\b)", "", _fold(text))
    return _number_words(re.findall(r"\d+(?:\.\d+)?|[a-z]+", folded))


def _phrase(text: str) -> tuple[str, ...]:
    tokens = normalize(text)
    while len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    return tuple(tokens)


def _spans(tokens: Sequence[str], phrase: tuple[str, ...]) -> list[tuple[int, int]]:
    n = len(phrase)
    if n == 0:
        return []
    return [(i, i + n) for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n]) == phrase]


def _is_number(token: str) -> bool:
    return re.fullmatch(r"\d+(?:\.\d+)?", token) is not None


@dataclass(frozen=True)
class Question:
    """One question with its known short answer."""

    id: str
    question: str
    answer: str
    category: str = "general"
    aliases: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        phrase = _phrase(self.answer)
        return len(phrase) == 1 and _is_number(phrase[0])

    @property
    def accepted(self) -> list[tuple[str, ...]]:
        """The answer and its aliases as normalised phrases."""
        return [p for p in dict.fromkeys(_phrase(a) for a in (self.answer, *self.aliases)) if p]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "question": self.question,
            "answer": self.answer,
            "aliases": list(self.aliases),
            "wrong": list(self.wrong),
        }


def bundled_questions_path() -> Path:
    return Path(str(resources.files("geomprobe") / "data" / "questions.jsonl"))


def _string_list(row: dict, key: str, where: str) -> tuple[str, ...]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise GeomprobeError(f"{where}: '{key}' must be a list of non-empty strings")
    return tuple(value)


def load_questions(source: str | Path | None = None, limit: int | None = None) -> list[Question]:
    """Questions from a JSONL file (default: the bundled set), the first ``limit`` if given."""
    path = bundled_questions_path() if source in (None, "questions") else Path(source)
    if not path.is_file():
        raise GeomprobeError(f"questions file {str(path)!r} does not exist; pass a JSONL file of questions")
    if limit is not None and limit < 1:
        raise GeomprobeError(f"--limit must be at least 1, got {limit}")
    questions: list[Question] = []
    seen: set[str] = set()
    try:
        lines = list(jsonl_lines(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError:
        raise GeomprobeError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    for n, line in lines:
        where = f"{path.name}:{n}"
        row = parse_json(line, where, "fix or remove that line")
        if not isinstance(row, dict):
            raise GeomprobeError(f"{where}: expected a JSON object with 'question' and 'answer'")
        qid = str(row.get("id", f"q{n}"))
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise GeomprobeError(f"{where}: question {qid!r} has no '{key}'; give a non-empty string")
        if qid in seen:
            raise GeomprobeError(f"{where}: question id {qid!r} appears twice; ids must be unique")
        seen.add(qid)
        q = Question(
            qid,
            row["question"].strip(),
            row["answer"].strip(),
            str(row.get("category", "general")),
            _string_list(row, "aliases", where),
            _string_list(row, "wrong", where),
        )
        if not q.accepted:
            raise GeomprobeError(f"{where}: the answer of {qid!r} has no letters or digits; give a readable answer")
        asked = normalize(q.question)
        echoed = next((" ".join(p) for p in q.accepted if _spans(asked, p)), None)
        if echoed is not None:
            # An answer that repeats the question would have to state it twice to count (rule 3).
            raise GeomprobeError(f"{where}: question {qid!r} contains its own answer {echoed!r}; rephrase the question")
        questions.append(q)
        if limit is not None and len(questions) == limit:
            break
    if not questions:
        raise GeomprobeError(f"{path} has no questions; give at least one row with 'question' and 'answer'")
    return questions


@dataclass(frozen=True)
class Grade:
    """A graded answer: ``grade`` in ``GRADES`` and the matcher rule that decided it."""

    grade: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"grade": self.grade, "reason": self.reason}


class AnswerGrader:
    """Grades answers to ``questions`` as true / false / unclear (rules in the module docstring).

    Every question's accepted answers are wrong answers for the other questions of its category.
    """

    def __init__(self, questions: Sequence[Question]) -> None:
        self.questions = list(questions)
        self._pools: dict[str, set[tuple[str, ...]]] = {}
        for q in self.questions:
            self._pools.setdefault(q.category, set()).update(q.accepted)

    def wrong_phrases(self, question: Question) -> list[tuple[str, ...]]:
        accepted = set(question.accepted)
        pool = {_phrase(w) for w in question.wrong} | self._pools.get(question.category, set())
        return sorted(p for p in pool if p and p not in accepted)

    def grade(self, question: Question, answer: str) -> Grade:
        tokens = normalize(answer)
        if not tokens:
            return Grade("unclear", "empty")
        text = " " + " ".join(tokens) + " "
        if any(f" {h} " in text for h in _HEDGES):
            return Grade("unclear", "hedge")
        asked = normalize(question.question)

        def stated(phrase: tuple[str, ...], outside: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
            spans = [s for s in _spans(tokens, phrase) if not any(s[0] < b and a < s[1] for a, b in outside)]
            return spans if len(spans) > len(_spans(asked, phrase)) else []

        accepted = question.accepted
        candidates = self.wrong_phrases(question)
        if question.numeric:  # "8" and "8.0" are one answer; every other number is a wrong one
            target = float(accepted[0][0])
            numbers = {t for t in tokens if _is_number(t)}
            accepted = [(t,) for t in numbers if float(t) == target] or accepted
            candidates = sorted(set(candidates) | {(t,) for t in numbers if float(t) != target})
        correct = [s for p in accepted for s in stated(p)]
        wrong = [p for p in candidates if stated(p, correct)]
        if (correct or wrong) and _NEGATIONS.intersection(tokens):
            return Grade("unclear", "negation")
        if correct and wrong:
            return Grade("unclear", "both")
        if correct:
            return Grade("true", "correct")
        if wrong:
            return Grade("false", "wrong:" + " ".join(wrong[0]))
        return Grade("unclear", "no-known-answer")
