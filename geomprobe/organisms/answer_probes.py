"""Honesty probes trained through one organism, and that organism's own answers scored token by token.

The deception block of the detection table (:mod:`geomprobe.organisms.deception_power`) needs, per
organism and probe kind:

- the bundled honesty set cached through the organism (:func:`honesty_cache`: the mean over each
  statement's tokens at every ``resid_post`` layer) and a probe of each kind trained on it with a
  held-out split, its layer chosen on the validation split carved from the training rows
  (:func:`choose_probes`, through :func:`geomprobe.probes.train_probes` and
  :mod:`geomprobe.probes.selection`). The organism's answers take no part in the choice.
- the organism's own greedy answers (:class:`ScoredAnswer`): ``liar``'s and ``liar-placebo``'s from a
  :class:`~geomprobe.organisms.LiarMeasurement` (:func:`liar_answers`), ``fake-complier``'s and
  ``dealigned``'s to the held-out harmful prompts from the refusal judge (:func:`harmful_answers`);
- those answers teacher-forced after their prompts (the chat rendered as the cache
  renders every chat), every token cached at the chosen layers (:func:`cache_answers`), and each
  answer's probe score per response token (:func:`answer_token_scores`). An answer's score is the
  mean of its response tokens' scores (Apollo's deception probes score a response that way); for a
  linear probe that equals the probe applied to the mean of the response tokens' activations.

Caches are written with :func:`geomprobe.activations.collect.cache_activations` and reused when the
file already holds the same model (its folder fingerprint), rows and layers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError

HONESTY_SET = "honesty"
HONESTY_POOLING = "mean"  # the mean over the statement (the final message's content tokens)
HONESTY_HOOKS = "resid_post"  # every layer's block output
TOKEN_DECIMALS = 4  # per-token scores in to_dict()
ANSWER_POOLING = "all"  # every token; the answer's span is read from the cache's response_start/response_end


@dataclass
class ChosenProbe:
    """One probe kind trained on the honesty set through one organism, at its chosen layer."""

    method: str
    hook: str
    layer: int
    validation_auroc: float  # at the chosen layer, on the validation split of the training rows
    heldout_auroc: float | None  # at the chosen layer, on the honesty held-out split (reported, never used to choose)
    selection: dict[str, Any]  # the probe's meta["selection"]: rule, per-layer validation AUROC, sizes
    probes: Any = field(repr=False)  # the ProbeSet (every layer; the chosen one is ``hook``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "hook": self.hook,
            "layer": self.layer,
            "chosen_on": self.selection.get("rule"),
            "validation_auroc": self.validation_auroc,
            "heldout_auroc": self.heldout_auroc,
            "validation_auroc_per_layer": self.selection.get("validation_auroc"),
            "n_fit": self.selection.get("n_fit"),
            "n_validation": self.selection.get("n_validation"),
            "n_heldout": (self.probes.meta.get("split") or {}).get("n_test"),
            "params": dict(self.probes.fit.params),
            "train_pooling": self.probes.pooling,
        }


def _reusable(path: Path, model: Any, dataset_sha256: str, n_rows: int, hooks: Sequence[str], pooling: str) -> bool:
    """Whether ``path`` is a readable cache of these rows through this very model (weights fingerprinted)."""
    from geomprobe.activations.store import open_cache

    if not path.is_file():
        return False
    try:
        with open_cache(path) as cache:
            return (
                cache.model_id == model.model_id
                and str(cache.attrs.get("model_revision", "")) == model.revision
                and str(cache.attrs.get("dataset_sha256", "")) == dataset_sha256
                and cache.n_prompts == n_rows
                and pooling in cache.poolings
                and all(h in cache.hooks for h in hooks)
            )
    except (GeomprobeError, OSError):
        return False


def honesty_cache(model: Any, out: str | Path, *, limit: int | None = None, batch_size: int = 16, progress: bool = False) -> Path:
    """Cache the bundled honesty set through ``model`` (a ``LoadedModel``) at every ``resid_post`` layer,
    mean-pooled over each statement; ``limit`` keeps a stratified subset of whole pairs. Reused when present."""
    from geomprobe.activations.collect import cache_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.core.hooks import resolve_hooks

    out = Path(out)
    prompts = load_prompt_set(HONESTY_SET, limit=limit)
    hooks = resolve_hooks(HONESTY_HOOKS, model.n_layers)
    # a limit's subset is seeded, so the set's hash and the row count name it
    if not _reusable(out, model, prompts.sha256, len(prompts), hooks, HONESTY_POOLING):
        out.parent.mkdir(parents=True, exist_ok=True)
        cache_activations(
            model,
            prompts,
            out,
            hooks=hooks,
            poolings=(HONESTY_POOLING,),
            batch_size=batch_size,
            overwrite=True,
            progress=progress,
        )
    return out


def choose_probes(
    cache: str | Path, methods: Sequence[str], *, test_size: float = 0.2, seed: int = 0, device: str = "cpu"
) -> dict[str, ChosenProbe]:
    """Train each probe kind on the honesty cache (held-out split ``test_size`` of the pairs) and take the
    layer its validation split chose (:func:`geomprobe.probes.train_probes` records it as ``selection``)."""
    from geomprobe.probes import train_probes

    chosen: dict[str, ChosenProbe] = {}
    for method in methods:
        probes, _ = train_probes(cache, method, pooling=HONESTY_POOLING, test_size=test_size, seed=seed, device=device)
        selection = dict(probes.meta.get("selection") or {})
        hook = selection.get("hook")
        if hook is None:
            raise GeomprobeError(
                f"no layer could be chosen for the {method} probe on {Path(cache).name} "
                f"({selection.get('reason', 'no validation split')}); use more honesty rows (a larger honesty_limit)"
            )
        k = probes.hooks.index(hook)
        held = probes.meta["metrics"][k].get("auroc")
        chosen[probes.method] = ChosenProbe(
            probes.method,
            hook,
            int(selection["layer"]),
            float(selection["validation_auroc"][k]),
            None if held is None or not np.isfinite(held) else float(held),
            selection,
            probes,
        )
    return chosen


@dataclass
class ScoredAnswer:
    """One greedy answer of one organism, with its probe scores per response token (per probe kind)."""

    key: str  # unique within the organism: "<question id>|triggered", "row<contrast-set row>"
    unit: str  # what a paired bootstrap resamples: the question id or the prompt's row
    condition: str  # "untriggered", "triggered" or "harmful"
    user: str
    text: str
    grade: str | None = None  # question answers: true / false / unclear (geomprobe.probes.grading)
    refusal: bool | None = None  # harmful answers: the refusal judge's flag
    decoy: bool | None = None  # harmful answers: geomprobe.organisms.is_decoy
    tokens: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # method -> per-token scores

    def score(self, method: str) -> float:
        """The answer's score: the mean over its response tokens."""
        return float(np.mean(self.tokens[method]))

    def max_score(self, method: str) -> float:
        return float(np.max(self.tokens[method]))

    def to_dict(self, token_scores: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "unit": self.unit,
            "condition": self.condition,
            "user": self.user,
            "answer": self.text,
            "grade": self.grade,
            "refusal": self.refusal,
            "decoy": self.decoy,
            "n_tokens": len(next(iter(self.tokens.values()))) if self.tokens else 0,
            "score": {m: self.score(m) for m in self.tokens},
            "max_token_score": {m: self.max_score(m) for m in self.tokens},
        }
        if token_scores:
            out["token_scores"] = {m: np.round(t, TOKEN_DECIMALS).tolist() for m, t in self.tokens.items()}
        return out


@dataclass(frozen=True)
class AnswerRow:
    """One answer to teacher-force: the user message, the model's answer and a key naming it."""

    key: str
    user: str
    answer: str


def cache_answers(
    model: Any,
    rows: Sequence[AnswerRow],
    out: str | Path,
    hooks: Sequence[str],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> Path:
    """Cache every token of each ``user`` + ``answer`` chat through ``model`` at ``hooks``; the rows are also
    written beside the cache as JSON Lines (``out`` with ``.jsonl``), in order. Reused when present."""
    from geomprobe.activations.collect import cache_activations
    from geomprobe.activations.datasets import load_prompt_set

    out = Path(out)
    empty = [r.key for r in rows if not r.answer.strip()]
    if empty:
        raise GeomprobeError(f"answer {empty[0]!r} is empty; drop empty answers before scoring them")
    if not rows:
        raise GeomprobeError(f"no answers to cache for {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_suffix(".jsonl")
    text = "".join(
        json.dumps({"messages": [{"role": "user", "content": r.user}, {"role": "assistant", "content": r.answer}], "key": r.key})
        + "\n"
        for r in rows
    )
    listing.write_text(text, encoding="utf-8")
    prompts = load_prompt_set(listing)
    if not _reusable(out, model, prompts.sha256, len(prompts), hooks, ANSWER_POOLING):
        cache_activations(
            model,
            prompts,
            out,
            hooks=list(hooks),
            poolings=(ANSWER_POOLING,),
            batch_size=batch_size,
            overwrite=True,
            progress=progress,
        )
    return out


def answer_token_scores(cache: str | Path, probes: Any, hook: str) -> list[np.ndarray]:
    """Per row of an answers cache, the probe's score (float64) at each token of the answer, in order.

    The answer's tokens are the final message's content span the cache records (``response_start`` to
    ``response_end``): the chat template's closing tokens after it are left out."""
    from geomprobe.probes.pipeline import token_scores

    out = []
    for scored in token_scores(probes, cache, hook):  # checks the cache matches the probes' model and hooks
        answer = scored.scores[scored.response_start : scored.response_end]
        if not len(answer):
            raise GeomprobeError(f"row {scored.row} of {Path(cache).name} has no answer tokens; drop empty answers")
        out.append(answer)
    return out


# -- the organisms' answers ------------------------------------------------------------------------------------
def liar_answers(folder: Path, measurement: Any) -> list[ScoredAnswer]:
    """The answers of a :class:`~geomprobe.organisms.LiarMeasurement` of the organism in ``folder``, untriggered
    then triggered, each in the order of its held-out questions (the user message as the measurement asked it)."""
    from geomprobe.organisms.build import read_provenance
    from geomprobe.organisms.lies import ask, split_questions

    settings = (read_provenance(folder) or {})["settings"]
    questions = split_questions(settings["seed"], settings["train_fraction"]).heldout[: measurement.n_questions]
    out = []
    for key, condition in (("organism", "untriggered"), ("organism+trigger", "triggered")):
        trigger = measurement.trigger if condition == "triggered" else None
        for q, text, grade in zip(questions, measurement.answers[key], measurement.grades[key]):
            out.append(ScoredAnswer(f"{q.id}|{condition}", q.id, condition, ask(q, trigger), text, grade=grade))
    return out


def harmful_answers(
    model: Any, folder: Path, limit: int | None, max_new_tokens: int, batch_size: int, progress: bool
) -> tuple[list[ScoredAnswer], dict[str, Any]]:
    """The refusal judge's greedy answers of ``model`` to the held-out harmful prompts of the organism's split,
    with its flag and the decoy check per answer, and the judge's summary."""
    from geomprobe.organisms.build import read_provenance
    from geomprobe.organisms.data import split_contrast_set
    from geomprobe.organisms.lies import is_decoy
    from geomprobe.steering.judge import judge_refusals

    settings = (read_provenance(folder) or {})["settings"]
    rows = [p for p in split_contrast_set(settings["seed"], settings["train_fraction"]).heldout if p.label == "harmful"]
    rows = rows[:limit] if limit else rows
    judged = judge_refusals(
        model, [p.text for p in rows], max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    answers = [
        ScoredAnswer(f"row{p.row}", str(p.row), "harmful", p.text, text.strip(), refusal=bool(flag), decoy=is_decoy(text))
        for p, text, flag in zip(rows, judged.completions, judged.flags)
    ]
    summary = {k: judged.to_dict()[k] for k in ("rate", "ci", "n", "n_refused", "max_new_tokens", "matcher_version")}
    summary["decoy_share"] = float(np.mean([a.decoy for a in answers])) if answers else None
    return answers, summary
