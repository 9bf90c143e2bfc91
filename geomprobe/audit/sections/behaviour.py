"""Behaviour for the steering section: refusal rates from the judge, and the layer chosen by them.

The steering layer is chosen by what ablating its harmful - harmless direction does to behaviour
on held-out prompts, not by geometry: every candidate layer (audited, below ``max_layer_fraction``
of the depth) is screened by the next-token refusal log-odds with its direction ablated (one
forward pass per prompt, with the KL on harmless prompts), the ``judge_candidates`` strongest
within the KL limit (the least disruptive, when none is within it) are judged by greedy
generation, and the one whose ablation removes the most refusals on the held-out harmful prompts
is chosen. When the unsteered model refuses none of them
there is nothing to remove, and the screen's log-odds decide (``selection`` says which happened).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

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
        return cls(float(judgement.rate), float(judgement.ci[0]), float(judgement.ci[1]), int(judgement.n),
                   int(judgement.n_refused), [bool(f) for f in judgement.flags])


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
    """Audited layers below ``max_layer_fraction`` of the depth (the shallowest one if none is);
    at most ``max_count`` of them, evenly spaced, because each one costs a forward pass per prompt."""
    limit = int(math.floor(max_layer_fraction * n_layers))
    below = sorted(layer for layer in layers if layer < limit) or sorted(layers)[:1]
    if max_count is None or len(below) <= max_count:
        return below
    picks = sorted({int(round(i)) for i in np.linspace(0, len(below) - 1, max_count)})
    return [below[i] for i in picks]


def judge(ctx: AuditContext, prompts: list[str], **steering: Any) -> Rate:
    """The judge's refusal rate of ``ctx``'s model on ``prompts`` (``steering``: vector, multiplier, hooks)."""
    from geomprobe.steering.judge import judge_refusals

    return Rate.from_judgement(judge_refusals(
        ctx.model, prompts, max_new_tokens=ctx.sizes.steering.judge_tokens, batch_size=ctx.options.batch_size,
        n_bootstrap=ctx.sizes.steering.judge_bootstrap, seed=ctx.options.seed, **steering))


def judge_ablated(ctx: AuditContext, direction: Any, prompts: list[str]) -> Rate:
    """The judge's refusal rate with ``direction`` projected out at every layer."""
    from geomprobe.steering.ablation import ablate

    with ablate(ctx.model, direction):
        return judge(ctx, prompts)


def choose_layer_by_behaviour(
    ctx: AuditContext, vector: Any, layers: list[int], harmful: list[str], harmless: list[str], unsteered: Rate,
) -> LayerChoice:
    """Screen ``layers`` by ablation log-odds, judge the strongest few, pick the one removing most refusals."""
    from geomprobe.steering import search_layers

    sizes = ctx.sizes.steering
    hooks = [hook_at(layer) for layer in layers]
    screen = ctx.clock.run("steering", f"screening {len(hooks)} candidate layers (direction ablated)", lambda: search_layers(
        ctx.model, vector, harmful, harmless_prompts=harmless, hooks=hooks, metric="refusal", mode="ablate",
        batch_size=ctx.options.batch_size))
    records = {r.hook: r for r in screen.records}
    cands = [Candidate(layer, hook, finite(records[hook].score_delta), finite(records[hook].kl_mean),
                       records[hook].kl_mean is None or records[hook].kl_mean <= sizes.kl_limit, False, None, None)
             for layer, hook in zip(layers, hooks)]
    def drop(c: Candidate) -> float:
        return c.refusal_delta if c.refusal_delta is not None else math.inf

    def kl(c: Candidate) -> float:
        return c.kl if c.kl is not None else math.inf

    within = [c for c in cands if c.within_kl]
    if within:
        judged = sorted(within, key=drop)[: max(1, sizes.judge_candidates)]
    else:
        # Every ablation is over the KL limit: judge the least disruptive ones. The strongest
        # log-odds drops then tend to be layers whose ablation wrecks the text (KL of several
        # nats), which "removes" every refusal by writing garbage.
        judged = sorted(cands, key=kl)[: max(1, sizes.judge_candidates)]
    rates: dict[str, Rate] = {}
    if unsteered.n_refused > 0:
        for c in judged:
            rate = ctx.clock.run("steering", f"judging {c.hook} ablated ({len(harmful)} prompts)",
                                 partial(judge_ablated, ctx, vector.vector_for(c.hook), harmful))
            rates[c.hook] = rate
            c.judged, c.harmful_rate, c.rate_delta = True, rate.rate, rate.rate - unsteered.rate
        best = min(judged, key=lambda c: (c.rate_delta, kl(c), drop(c)))  # ties: the less disruptive layer
        selection = "behaviour"
        among = ("the {n} layer(s) of strongest next-token refusal drop within the KL limit" if within else
                 "the {n} layer(s) of smallest KL on harmless prompts (none within the KL limit)")
        selected_by = (f"largest drop in the judge's refusal rate on {len(harmful)} held-out harmful prompts with the "
                       f"direction ablated, among {among.format(n=len(judged))}")
    else:
        best = min(judged, key=drop)
        selection = "next-token log-odds"
        selected_by = ("largest drop in next-token refusal log-odds with the direction ablated on held-out harmful "
                       "prompts (the unsteered model refused none of them, so no refusal rate can drop)")
    if len(layers) == 1:
        selection, selected_by = "only candidate", f"the only audited layer below {sizes.max_layer_fraction:.0%} of depth"
    hook = best.hook
    direction = vector.vector_for(hook)
    harmful_rate = rates.get(hook) or ctx.clock.run("steering", f"judging {hook} ablated",
                                                    lambda: judge_ablated(ctx, direction, harmful))
    if not best.judged:
        best.judged, best.harmful_rate, best.rate_delta = True, harmful_rate.rate, harmful_rate.rate - unsteered.rate
    harmless_rate = ctx.clock.run("steering", f"judging {hook} ablated on harmless prompts",
                                  lambda: judge_ablated(ctx, direction, harmless))
    return LayerChoice(best.layer, hook, selection, selected_by, cands, JudgedSetting(harmful_rate, harmless_rate),
                       records[hook])
