"""The one rule for choosing where (and how hard) to steer, used by ``steer search`` and the audit.

Input: a screen, one :class:`ScreenRow` per setting tried (a hook with its direction ablated at
every layer, or a hook x multiplier with the vector added), each with the change of the metric
(e.g. the next-token refusal log-odds) and the mean KL on harmless prompts. The rule, with the
parameters of :class:`LayerRule`:

1. **Depth.** Only settings at layers below ``floor(max_layer_fraction * n_layers)`` are eligible
   (the last 20 % of layers are excluded by default, as in the refusal-direction recipe); when no
   screened layer is below that limit, the shallowest screened layer's settings are.
2. **KL limit.** A setting is within the limit when its mean KL is at most ``kl_limit`` (or no KL
   was measured). The ``judge_candidates`` eligible settings of strongest metric change within
   the limit (strongest: largest drop with ``maximize=False``, largest rise otherwise) form the
   shortlist. When none is within the limit, the ``judge_candidates`` settings of smallest KL
   form it instead: the strongest changes are then usually settings that wreck the text (several
   nats of KL), which "remove" every refusal by writing garbage.
3. **Behaviour decides.** With a judge (a refusal rate from greedy generations per setting) and an
   unsteered rate that can still move the asked way (above 0 to lower, below 1 to raise), every
   shortlisted setting is judged and the one whose rate moves most the asked way wins, ties to
   the smaller KL, then the stronger metric change. Otherwise the strongest metric change on the
   shortlist wins.

A metric change or KL that is missing, NaN or infinite counts as the weakest change and the
largest KL; a NaN KL is not within the limit. :func:`select_setting` is pure (the judge is a
callable), so it is tested against a brute-force choice over hand-made screens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from geomprobe.core.errors import GeomprobeError

# what decided, as ``LayerSelection.selection`` records it
BEHAVIOUR = "behaviour"
ONLY_CANDIDATE = "only candidate"
SCORE_NAMES = {"refusal-log-odds": "next-token log-odds", "logit-diff": "next-token logit difference", "probe": "probe score"}
METRIC_PHRASES = {
    "refusal-log-odds": "next-token refusal log-odds",
    "logit-diff": "next-token logit difference",
    "probe": "probe score",
}


@dataclass(frozen=True)
class LayerRule:
    """Parameters of the layer-choice rule (see the module docstring).

    ``maximize``: False when the metric should drop (the audit ablates the refusal direction to
    remove refusals; ``steer search --minimize``), True when it should rise (``steer search``).
    """

    kl_limit: float | None = 0.1
    max_layer_fraction: float = 0.8
    judge_candidates: int = 3
    maximize: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_layer_fraction <= 1:
            raise GeomprobeError(f"max_layer_fraction must be in (0, 1]; got {self.max_layer_fraction}")
        if self.judge_candidates < 1:
            raise GeomprobeError(f"judge_candidates must be at least 1; got {self.judge_candidates}")

    def layer_limit(self, n_layers: int) -> int:
        """Layers at or above this index are not eligible."""
        return int(math.floor(self.max_layer_fraction * n_layers))

    def within_kl(self, kl: float | None) -> bool:
        return self.kl_limit is None or kl is None or kl <= self.kl_limit  # NaN: False

    def strength(self, score_delta: float | None) -> float:
        """Sort key, smaller = stronger change the asked way; missing or non-finite: weakest."""
        if score_delta is None or not math.isfinite(score_delta):
            return math.inf
        return -score_delta if self.maximize else score_delta


@dataclass
class ScreenRow:
    """One screened setting: ``multiplier`` None means the hook's direction ablated at every layer."""

    hook: str
    layer: int
    multiplier: float | None
    score_delta: float | None  # metric change against the unsteered model
    kl: float | None  # mean KL(unsteered || steered) on harmless prompts, nats

    @classmethod
    def from_record(cls, record: Any) -> ScreenRow:
        """From a :class:`~geomprobe.steering.search.SearchRecord`."""
        return cls(record.hook, record.layer, record.multiplier, record.score_delta, record.kl_mean)


@dataclass
class CandidateOutcome:
    """One eligible setting and what the rule did with it."""

    row: ScreenRow
    within_kl: bool
    shortlisted: bool = False
    judged: bool = False
    rate: float | None = None  # the judge's rate with this setting
    rate_delta: float | None = None  # minus the unsteered rate


@dataclass
class LayerSelection:
    """The chosen setting, what decided (``selection``), the rule's words (``selected_by``) and every candidate."""

    chosen: CandidateOutcome
    selection: str  # behaviour | next-token log-odds (the metric's score name) | only candidate
    selected_by: str
    shortlist: str  # within-kl | least-kl
    below_depth_limit: bool  # False: no screened layer was below the depth limit (shallowest taken)
    candidates: list[CandidateOutcome]
    rule: LayerRule

    @property
    def hook(self) -> str:
        return self.chosen.row.hook

    @property
    def layer(self) -> int:
        return self.chosen.row.layer

    @property
    def multiplier(self) -> float | None:
        return self.chosen.row.multiplier

    @property
    def within_limits(self) -> bool:
        """True when the chosen setting is below the depth limit and within the KL limit."""
        return self.below_depth_limit and self.chosen.within_kl

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "layer": self.layer,
            "multiplier": self.multiplier,
            "selection": self.selection,
            "selected_by": self.selected_by,
            "shortlist": self.shortlist,
            "below_depth_limit": self.below_depth_limit,
            "within_kl": self.chosen.within_kl,
            "rule": asdict(self.rule),
            "candidates": [{**asdict(c.row), **{k: v for k, v in asdict(c).items() if k != "row"}} for c in self.candidates],
        }


@dataclass
class _Words:
    """How a selection is said: the mode and metric of the screen, and the judged prompts."""

    mode: str = "ablate"
    metric: str = "refusal-log-odds"
    n_prompts: int | None = None
    prompt_kind: str = ""


def candidate_layers(layers: Sequence[int], n_layers: int, max_layer_fraction: float, max_count: int | None = None) -> list[int]:
    """Layers below ``max_layer_fraction`` of the depth (the shallowest one if none is); at most
    ``max_count`` of them, evenly spaced, because screening each one costs a forward pass per prompt."""
    import numpy as np

    limit = LayerRule(max_layer_fraction=max_layer_fraction).layer_limit(n_layers)
    below = sorted(layer for layer in layers if layer < limit) or sorted(layers)[:1]
    if max_count is None or len(below) <= max_count:
        return below
    picks = sorted({int(round(i)) for i in np.linspace(0, len(below) - 1, max_count)})
    return [below[i] for i in picks]


def select_setting(
    rows: Sequence[ScreenRow],
    rule: LayerRule,
    *,
    n_layers: int,
    judge: Callable[[ScreenRow], float] | None = None,
    unsteered_rate: float | None = None,
    mode: str = "ablate",
    metric: str = "refusal-log-odds",
    n_judged_prompts: int | None = None,
    prompt_kind: str = "",
) -> LayerSelection:
    """Apply the layer-choice rule to a screen (see the module docstring).

    ``judge(row)`` returns the judge's rate with that setting; it is called once per shortlisted
    setting, in shortlist order, and only when ``unsteered_rate`` can still move the asked way.
    ``mode``, ``metric``, ``n_judged_prompts`` and ``prompt_kind`` (e.g. "harmful") only word ``selected_by``.
    """
    steered = [r for r in rows if r.multiplier != 0]
    if not steered:
        raise GeomprobeError("the screen has no steered setting to choose from; screen at least one hook")
    limit = rule.layer_limit(n_layers)
    eligible = [r for r in steered if r.layer < limit]
    below = bool(eligible)
    if not below:  # nothing below the depth limit: the shallowest screened layer
        shallowest = min(r.layer for r in steered)
        eligible = [r for r in steered if r.layer == shallowest]
    cands = [CandidateOutcome(r, rule.within_kl(r.kl)) for r in eligible]
    within = [c for c in cands if c.within_kl]

    def strength(c: CandidateOutcome) -> float:
        return rule.strength(c.row.score_delta)

    def kl(c: CandidateOutcome) -> float:
        return c.row.kl if c.row.kl is not None and math.isfinite(c.row.kl) else math.inf

    k = rule.judge_candidates
    shortlist = sorted(within, key=strength)[:k] if within else sorted(cands, key=kl)[:k]
    for c in shortlist:
        c.shortlisted = True
    movable = unsteered_rate is not None and (unsteered_rate < 1 if rule.maximize else unsteered_rate > 0)
    if judge is not None and movable:
        assert unsteered_rate is not None
        for c in shortlist:
            c.judged, c.rate = True, float(judge(c.row))
            c.rate_delta = c.rate - unsteered_rate
        sign = -1.0 if rule.maximize else 1.0
        moved = {id(c): sign * float(c.rate_delta or 0.0) for c in shortlist}  # every shortlisted one was judged
        best = min(shortlist, key=lambda c: (moved[id(c)], kl(c), strength(c)))  # ties: the less disruptive setting
        selection = BEHAVIOUR
    else:
        best = min(shortlist, key=strength)
        selection = SCORE_NAMES.get(metric, metric)
    metric = {"refusal": "refusal-log-odds"}.get(metric, metric)  # the metric's old name
    words = _Words(mode, metric, n_judged_prompts, prompt_kind)
    selected_by = _selected_by(rule, words, selection, bool(within), len(shortlist), judge is not None)
    if len({(c.row.hook, c.row.multiplier) for c in cands}) == 1:
        selection = ONLY_CANDIDATE
        selected_by = (
            f"the only candidate layer below {rule.max_layer_fraction:.0%} of depth"
            if below
            else f"the shallowest screened layer (none is below {rule.max_layer_fraction:.0%} of depth)"
        )
    return LayerSelection(best, selection, selected_by, "within-kl" if within else "least-kl", below, cands, rule)


def _selected_by(rule: LayerRule, words: _Words, selection: str, any_within: bool, n_short: int, had_judge: bool) -> str:
    change = "rise" if rule.maximize else "drop"
    unit = "layer(s)" if words.mode == "ablate" else "setting(s)"
    how = "with the direction ablated" if words.mode == "ablate" else "with the vector added"
    phrase = METRIC_PHRASES.get(words.metric, words.metric)
    among = (
        f"the {n_short} {unit} of strongest {phrase} {change} within the KL limit"
        if any_within
        else f"the {n_short} {unit} of smallest KL on harmless prompts (none within the KL limit)"
    )
    kind = f" {words.prompt_kind}" if words.prompt_kind else ""
    prompts = f"{words.n_prompts} held-out{kind}" if words.n_prompts is not None else f"the{kind}"
    if selection == BEHAVIOUR:
        return f"largest {change} in the judge's refusal rate on {prompts} prompts {how} (ties: smaller KL), among {among}"
    text = f"largest {change} in {phrase} {how}, among {among}"
    if had_judge:
        bound = "all" if rule.maximize else "none"
        text += f" (the unsteered model refused {bound} of the judged prompts, so no refusal rate can {change})"
    return text


def judged_choice(
    model: Any,
    vector: Any,
    result: Any,
    prompts: Sequence[str],
    harmless: Sequence[str],
    rule: LayerRule,
    *,
    judge_tokens: int = 40,
    batch_size: int = 8,
    seed: int = 0,
    positions: str = "all",
) -> tuple[LayerSelection, dict[str, Any] | None]:
    """The rule applied to a :class:`~geomprobe.steering.search.SearchResult` on ``model``.

    With ``judge_tokens > 0`` and the refusal log-odds metric, the judge's refusal rate (greedy
    generations of ``judge_tokens`` tokens on ``prompts``) decides among the shortlist; with any
    other metric the metric decides and the chosen setting is judged for the record only. Returns
    the selection and the judge's record (:func:`~geomprobe.steering.judge.judge_setting`'s form,
    None without judging).
    """
    from geomprobe.steering.ablation import ablate
    from geomprobe.steering.judge import judge_refusals, judge_setting

    rows = [ScreenRow.from_record(r) for r in result.records]
    mode = str(result.settings.get("mode", "add"))
    if judge_tokens <= 0 or not prompts:
        return select_setting(rows, rule, n_layers=result.n_layers, mode=mode, metric=result.metric), None
    if result.metric != "refusal-log-odds":
        chosen = select_setting(rows, rule, n_layers=result.n_layers, mode=mode, metric=result.metric)
        return chosen, judge_setting(
            model,
            vector,
            chosen.hook,
            chosen.multiplier,
            prompts,
            harmless,
            max_new_tokens=judge_tokens,
            positions=positions,
            batch_size=batch_size,
            seed=seed,
        )
    kwargs: dict[str, Any] = dict(max_new_tokens=judge_tokens, batch_size=batch_size, seed=seed)
    sets = {"prompts": list(prompts), "harmless": list(harmless)}

    def run(texts: list[str], row: ScreenRow | None) -> Any:
        if row is None:
            return judge_refusals(model, texts, **kwargs)
        direction = vector.vector_for(row.hook)
        if row.multiplier is None:
            with ablate(model, direction):
                return judge_refusals(model, texts, **kwargs)
        return judge_refusals(
            model, texts, vector=direction, multiplier=row.multiplier, hooks=[row.hook], positions=positions, **kwargs
        )

    unsteered = {name: run(texts, None) for name, texts in sets.items() if texts}
    steered: dict[tuple[str, float | None], Any] = {}

    def judge(row: ScreenRow) -> float:
        steered[(row.hook, row.multiplier)] = run(sets["prompts"], row)
        return float(steered[(row.hook, row.multiplier)].rate)

    chosen = select_setting(
        rows,
        rule,
        n_layers=result.n_layers,
        judge=judge,
        unsteered_rate=unsteered["prompts"].rate,
        mode=mode,
        metric=result.metric,
        n_judged_prompts=len(prompts),
    )
    key = (chosen.hook, chosen.multiplier)
    on_prompts = steered.get(key) or run(sets["prompts"], chosen.chosen.row)
    record: dict[str, Any] = {
        "hook": chosen.hook,
        "multiplier": chosen.multiplier,
        "max_new_tokens": judge_tokens,
        "unsteered": {name: j.to_dict() for name, j in unsteered.items()},
        "steered": {"prompts": on_prompts.to_dict()},
    }
    if sets["harmless"]:
        record["steered"]["harmless"] = run(sets["harmless"], chosen.chosen.row).to_dict()
    return chosen, record
