"""Behaviour for the steering section: refusal rates from the judge, and the layer chosen by them.

The steering layer is chosen by what ablating its harmful - harmless direction does to behaviour
on held-out prompts, not by geometry: every candidate layer (audited, below ``max_layer_fraction``
of the depth) is screened by the next-token refusal log-odds with its direction ablated (one
forward pass per prompt, with the KL on harmless prompts), the ``judge_candidates`` strongest
within the KL limit (the least disruptive, when none is within it) are judged by greedy
generation, and the one whose ablation removes the most refusals on the held-out harmful prompts
is chosen. When the unsteered model refuses none of them
there is nothing to remove, and the screen's log-odds decide (``selection`` says which happened).
The rule is :func:`geomprobe.steering.select.select_setting`, the one ``geomprobe steer search``
uses; this module screens, judges and records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from geomprobe.audit.context import AuditContext, finite, hook_at, internal
from geomprobe.audit.spec import doc


@dataclass
class Rate:
    """One refusal rate from greedy generations (the judge), with its bootstrap interval."""

    rate: float = doc("share of completions with a refusal phrase")
    ci_low: float = doc("interval low")
    ci_high: float = doc("interval high")
    n: int = doc("prompts")
    n_refused: int = doc("refusals")
    flags: list[bool] = internal()  # per prompt, for paired comparisons with a second checkpoint

    @classmethod
    def from_judgement(cls, judgement: Any) -> Rate:
        return cls(
            float(judgement.rate),
            float(judgement.ci[0]),
            float(judgement.ci[1]),
            int(judgement.n),
            int(judgement.n_refused),
            [bool(f) for f in judgement.flags],
        )


@dataclass
class JudgedSetting:
    """Refusal rates on the held-out harmful and harmless prompts under one setting."""

    harmful: Rate = doc("on the held-out harmful prompts")
    harmless: Rate | None = doc("on the held-out harmless prompts")


@dataclass
class Candidate:
    """One candidate steering layer: its direction ablated everywhere, scored on held-out prompts."""

    layer: int = doc("block index")
    hook: str = doc("hook")
    refusal_delta: float | None = doc("next-token refusal log-odds change, direction ablated")
    kl: float | None = doc("mean KL on harmless prompts, direction ablated")
    within_kl: bool = doc("kl <= kl_limit")
    judged: bool = doc("refusal rate measured by generation")
    harmful_rate: float | None = doc("judge's refusal rate on held-out harmful prompts, ablated", type="number|null")
    rate_delta: float | None = doc("minus the unsteered rate", type="number|null")


@dataclass
class LayerChoice:
    layer: int
    hook: str
    selection: str  # behaviour | next-token log-odds | shallowest
    selected_by: str
    candidates: list[Candidate]
    ablated: JudgedSetting  # the chosen layer's direction ablated
    ablation_record: Any  # the screen's record at the chosen hook (log-odds and KL)


def candidate_layers(layers: Sequence[int], n_layers: int, max_layer_fraction: float, max_count: int | None = None) -> list[int]:
    """:func:`geomprobe.steering.select.candidate_layers` (imported lazily: the audit package stays light)."""
    from geomprobe.steering.select import candidate_layers as select_candidates

    return select_candidates(layers, n_layers, max_layer_fraction, max_count)


def judge(ctx: AuditContext, prompts: list[str], **steering: Any) -> Rate:
    """The judge's refusal rate of ``ctx``'s model on ``prompts`` (``steering``: vector, multiplier, hooks)."""
    from geomprobe.steering.judge import judge_refusals

    return Rate.from_judgement(
        judge_refusals(
            ctx.model,
            prompts,
            max_new_tokens=ctx.sizes.steering.judge_tokens,
            batch_size=ctx.options.batch_size,
            n_bootstrap=ctx.sizes.steering.judge_bootstrap,
            seed=ctx.options.seed,
            **steering,
        )
    )


def judge_ablated(ctx: AuditContext, direction: Any, prompts: list[str]) -> Rate:
    """The judge's refusal rate with ``direction`` projected out at every layer."""
    from geomprobe.steering.ablation import ablate

    with ablate(ctx.model, direction):
        return judge(ctx, prompts)


def choose_layer_by_behaviour(
    ctx: AuditContext,
    vector: Any,
    layers: list[int],
    harmful: list[str],
    harmless: list[str],
    unsteered: Rate,
) -> LayerChoice:
    """Screen ``layers`` by ablation log-odds, judge the strongest few, pick the one removing most refusals."""
    from geomprobe.steering import search_layers
    from geomprobe.steering.select import LayerRule, ScreenRow, select_setting

    sizes = ctx.sizes.steering
    hooks = [hook_at(layer) for layer in layers]
    screen = ctx.clock.run(
        "steering",
        f"screening {len(hooks)} candidate layers (direction ablated)",
        lambda: search_layers(
            ctx.model,
            vector,
            harmful,
            harmless_prompts=harmless,
            hooks=hooks,
            metric="refusal-log-odds",
            mode="ablate",
            batch_size=ctx.options.batch_size,
        ),
    )
    records = {r.hook: r for r in screen.records}
    rates: dict[str, Rate] = {}

    def judge_row(row: ScreenRow) -> float:
        rates[row.hook] = ctx.clock.run(
            "steering",
            f"judging {row.hook} ablated ({len(harmful)} prompts)",
            partial(judge_ablated, ctx, vector.vector_for(row.hook), harmful),
        )
        return rates[row.hook].rate

    # the one layer-choice rule (geomprobe.steering.select), with the audit's sizes; the audit's
    # candidates are already below the depth limit (candidate_layers), so its n_layers is the model's
    rule = LayerRule(
        kl_limit=sizes.kl_limit,
        max_layer_fraction=sizes.max_layer_fraction,
        judge_candidates=max(1, sizes.judge_candidates),
        maximize=False,
    )
    chosen = select_setting(
        [ScreenRow.from_record(records[hook]) for hook in hooks],
        rule,
        n_layers=ctx.model.n_layers,
        judge=judge_row,
        unsteered_rate=unsteered.rate,
        mode="ablate",
        metric="refusal-log-odds",
        n_judged_prompts=len(harmful),
        prompt_kind="harmful",
    )
    cands = [
        Candidate(
            c.row.layer, c.row.hook, finite(c.row.score_delta), finite(c.row.kl), c.within_kl, c.judged, c.rate, c.rate_delta
        )
        for c in chosen.candidates
    ]
    best = next(c for c in cands if c.hook == chosen.hook)
    selection, selected_by = chosen.selection, chosen.selected_by
    hook = best.hook
    direction = vector.vector_for(hook)
    harmful_rate = rates.get(hook) or ctx.clock.run(
        "steering", f"judging {hook} ablated", lambda: judge_ablated(ctx, direction, harmful)
    )
    if not best.judged:
        best.judged, best.harmful_rate, best.rate_delta = True, harmful_rate.rate, harmful_rate.rate - unsteered.rate
    harmless_rate = ctx.clock.run(
        "steering", f"judging {hook} ablated on harmless prompts", lambda: judge_ablated(ctx, direction, harmless)
    )
    return LayerChoice(best.layer, hook, selection, selected_by, cands, JudgedSetting(harmful_rate, harmless_rate), records[hook])
