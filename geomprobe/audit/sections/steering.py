"""Steering section: dose-response of the harmful - harmless direction at one layer, and behaviour.

The mean-difference vector is built from the harmful-harmless rows that are not held out. The
layer is chosen by behaviour on the held-out prompts (:mod:`geomprobe.audit.sections.behaviour`:
the layer whose direction, ablated, removes the most refusals by the judge). At that layer: the
refusal log-odds per multiplier, the KL side effect on harmless prompts, the direction ablated
instead of added, and the judge's refusal rates (greedy generations, bootstrap intervals) beside
the log-odds for the unsteered model, the ablation and the strongest multiplier within the KL limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, as_metrics, finite, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.behaviour import (
    Candidate,
    JudgedSetting,
    candidate_layers,
    choose_layer_by_behaviour,
    judge,
)
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt
from geomprobe.core.errors import GeomprobeError


@dataclass
class Ablation:
    refusal: float | None
    refusal_delta: float | None
    kl: float | None


@dataclass
class DoseResponse:
    """Refusal and KL per multiplier (ascending) at one hook, and with the direction ablated."""

    baseline: float | None
    multipliers: list[float]
    refusal: list[float | None]
    refusal_delta: list[float | None]
    kl: list[float | None]
    kl_max: list[float | None]
    ablation: Ablation

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


@dataclass
class BestDose:
    multiplier: float
    refusal: float
    kl: float | None


@dataclass
class Judge:
    """The judge's refusal rates beside the log-odds: unsteered, ablated, at the best multiplier."""

    max_new_tokens: int
    matcher_version: str
    ci_level: float
    unsteered: JudgedSetting
    ablated: JudgedSetting
    best: JudgedSetting | None


@dataclass
class SteeringResult:
    """metrics.json ``steering``; the vector, prompts and rows stay for the comparison section."""

    hook: str
    layer: int
    selection: str
    selected_by: str
    candidates: list[Candidate]
    vector_method: str
    pooling: str
    vector_norm: float
    metric: str
    baseline: float | None
    multipliers: list[float]
    refusal: list[float | None]
    refusal_delta: list[float | None]
    kl: list[float | None]
    kl_max: list[float | None]
    ablation: Ablation
    best: BestDose | None
    judge: Judge
    n_prompts: int
    n_harmless: int
    vector: Any = internal()  # the SteeringVector added
    train_rows: Any = internal()  # harmful-harmless rows the vector was built from
    harmful: list[str] = internal()  # held-out prompts scored for refusal
    harmless: list[str] = internal()  # held-out prompts for the KL side effect
    search: Any = internal()  # the multiplier search result, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def steering_rows(prompts: Any, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of the harmful-harmless cache: ``n_per_class`` held out per class."""
    labels = prompts.labels
    rng = np.random.default_rng(seed + 7)
    held = []
    for cls in range(len(prompts.label_names)):
        rows = np.flatnonzero(labels == cls)
        if len(rows) < n_per_class + 2:
            raise GeomprobeError(
                f"class {prompts.label_names[cls]!r} has {len(rows)} prompts; steering needs {n_per_class} held out plus 2 "
                "to build the vector (raise the harmful-harmless limit)"
            )
        held.append(np.sort(rng.choice(rows, size=n_per_class, replace=False)))
    held_rows = np.sort(np.concatenate(held))
    train_rows = np.setdiff1d(np.arange(len(labels)), held_rows)
    return train_rows, held_rows


def user_text(prompt: Any) -> str:
    """The user message of a one-turn prompt (what steering renders with the chat template)."""
    users = [text for role, text in prompt.messages if role == "user"]
    if not users:
        raise GeomprobeError("steering prompts need a user message; the harmful-harmless set has rows without one")
    return users[-1]


def build_vector(cache: Path, hooks: str | list[str], rows: np.ndarray) -> Any:
    """The harmful - harmless mean-difference vector at each of ``hooks`` from ``rows`` of the cache."""
    from geomprobe.activations.store import open_cache
    from geomprobe.steering import build_from_arrays

    names_ = [hooks] if isinstance(hooks, str) else list(hooks)
    with open_cache(cache) as handle:
        arrays = {hook: handle.read(hook, "last")[rows] for hook in names_}
        labels, names, model_id = handle.labels[rows], handle.label_names, handle.model_id
    return build_from_arrays(arrays, labels, names, method="mean-diff", pooling="last", model_id=model_id,
                             metadata={"source": "audit", "rows": "harmful-harmless rows not held out for steering"})


def dose(ctx: AuditContext, vector: Any, hook: str, harmful: list[str], harmless: list[str]) -> tuple[Any, Any]:
    """``vector`` added at ``hook`` on ``ctx``'s model for each multiplier, and ablated: the two search results."""
    from geomprobe.steering import search_layers

    batch_size = ctx.options.batch_size
    added = search_layers(ctx.model, vector, harmful, harmless_prompts=harmless, hooks=[hook],
                          multipliers=sorted(ctx.sizes.multipliers), metric="refusal", mode="add", batch_size=batch_size)
    ablated = search_layers(ctx.model, vector, harmful, harmless_prompts=harmless, hooks=[hook], metric="refusal",
                            mode="ablate", batch_size=batch_size)
    return added, ablated


def summarize_dose(added: Any, ablated: Any) -> DoseResponse:
    """The records of :func:`dose` as stored in metrics.json (multipliers ascending); ``ablated`` is a
    search result or one of its records."""
    recs = sorted((r for r in added.records if r.multiplier is not None), key=lambda r: r.multiplier)
    ab = ablated.records[0] if hasattr(ablated, "records") else ablated
    return DoseResponse(
        baseline=finite(added.baseline), multipliers=[float(r.multiplier) for r in recs],
        refusal=[finite(r.score_mean) for r in recs], refusal_delta=[finite(r.score_delta) for r in recs],
        kl=[finite(r.kl_mean) for r in recs], kl_max=[finite(r.kl_max) for r in recs],
        ablation=Ablation(finite(ab.score_mean), finite(ab.score_delta), finite(ab.kl_mean)),
    )


def strongest_within_kl(response: DoseResponse, kl_limit: float) -> BestDose | None:
    """The multiplier of highest refusal whose KL is at most ``kl_limit`` (None when none is)."""
    ok = [(m, r, k) for m, r, k in zip(response.multipliers, response.refusal, response.kl)
          if r is not None and (k is None or k <= kl_limit)]
    if not ok:
        return None
    m, r, k = max(ok, key=lambda t: t[1])
    return BestDose(m, r, k)


class SteeringSection(AuditSection):
    name = "steering"
    title = "Steering dose-response"
    settings_key = "steering"
    settings_fields = (
        ("settings.steering", "object", "steering settings"),
        ("settings.steering.pooling", "string", "pooling the vector was read with"),
        ("settings.steering.vector_method", "string", "how the direction was built (`mean-diff`: harmful - harmless)"),
        ("settings.steering.metric", "string", "behaviour metric (`refusal`: log-odds of a refusal first token)"),
        ("settings.steering.multipliers", "list[number]", "multipliers of the vector tried"),
        ("settings.steering.n_prompts_per_class", "integer", "held-out harmful (metric) and harmless (KL) prompts"),
        ("settings.steering.kl_limit", "number", "largest mean KL accepted for `steering.best`"),
        ("settings.steering.max_layer_fraction", "number", "layers at or above this fraction of depth are not chosen"),
        ("settings.steering.positions", "string", "positions the vector is added at"),
        ("settings.steering.judge_tokens", "integer", "greedy tokens generated per prompt for the judge's refusal rate"),
        ("settings.steering.judge_candidates", "integer", "candidate layers judged by generation after the ablation screen"),
        ("settings.steering.screen_layers", "integer", "candidate layers screened at most (evenly spaced)"),
    )
    fields = (
        ("steering", "object", "dose-response of the harmful-harmless direction at one layer"),
        ("steering.hook", "string", "hook the vector is added at"),
        ("steering.layer", "integer", "its block index"),
        ("steering.selection", "string", "what chose the layer: `behaviour` (the judge's refusal-rate drop with the "
         "direction ablated), `next-token log-odds` (no held-out refusals to remove) or `only candidate`"),
        ("steering.selected_by", "string", "how the layer was chosen, in words"),
        ("steering.candidates", "list[object]", "every candidate layer (audited, below `max_layer_fraction` of depth)"),
        ("steering.candidates[].layer", "integer", "block index"),
        ("steering.candidates[].hook", "string", "hook"),
        ("steering.candidates[].refusal_delta", "number", "next-token refusal log-odds change, direction ablated"),
        ("steering.candidates[].kl", "number", "mean KL on harmless prompts, direction ablated"),
        ("steering.candidates[].within_kl", "bool", "kl <= kl_limit"),
        ("steering.candidates[].judged", "bool", "refusal rate measured by generation"),
        ("steering.candidates[].harmful_rate", "number|null", "judge's refusal rate on held-out harmful prompts, ablated"),
        ("steering.candidates[].rate_delta", "number|null", "minus the unsteered rate"),
        ("steering.vector_method", "string", "direction method"),
        ("steering.pooling", "string", "pooling the direction was read with"),
        ("steering.vector_norm", "number", "L2 norm of the vector at multiplier 1"),
        ("steering.metric", "string", "behaviour metric on harmful prompts"),
        ("steering.baseline", "number", "unsteered mean refusal log-odds on the held-out harmful prompts"),
        ("steering.multipliers", "list[number]", "multipliers, ascending"),
        ("steering.refusal", "list[number]", "mean refusal log-odds per multiplier"),
        ("steering.refusal_delta", "list[number]", "refusal - baseline per multiplier"),
        ("steering.kl", "list[number]", "mean KL(unsteered || steered) on harmless prompts per multiplier, nats"),
        ("steering.kl_max", "list[number]", "largest per-prompt KL per multiplier"),
        ("steering.ablation", "object", "the direction projected out at every layer instead of added"),
        ("steering.ablation.refusal", "number", "mean refusal log-odds"),
        ("steering.ablation.refusal_delta", "number", "minus the baseline"),
        ("steering.ablation.kl", "number", "mean KL on harmless prompts"),
        ("steering.best", "object|null", "multiplier with the highest refusal whose KL <= kl_limit"),
        ("steering.best.multiplier", "number", "multiplier"),
        ("steering.best.refusal", "number", "mean refusal log-odds"),
        ("steering.best.kl", "number", "mean KL"),
        ("steering.judge", "object", "refusal rates from greedy generations (phrase matcher, `geomprobe.steering.judge`)"),
        ("steering.judge.max_new_tokens", "integer", "tokens generated per prompt"),
        ("steering.judge.matcher_version", "string", "refusal-phrase list the rates are comparable under"),
        ("steering.judge.ci_level", "number", "level of the percentile-bootstrap intervals over prompts"),
        ("steering.judge.unsteered", "object", "the unsteered model"),
        ("steering.judge.unsteered.harmful", "object", "on the held-out harmful prompts"),
        ("steering.judge.unsteered.harmful.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.unsteered.harmful.ci_low", "number", "interval low"),
        ("steering.judge.unsteered.harmful.ci_high", "number", "interval high"),
        ("steering.judge.unsteered.harmful.n", "integer", "prompts"),
        ("steering.judge.unsteered.harmful.n_refused", "integer", "refusals"),
        ("steering.judge.unsteered.harmless", "object", "on the held-out harmless prompts"),
        ("steering.judge.unsteered.harmless.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.unsteered.harmless.ci_low", "number", "interval low"),
        ("steering.judge.unsteered.harmless.ci_high", "number", "interval high"),
        ("steering.judge.unsteered.harmless.n", "integer", "prompts"),
        ("steering.judge.unsteered.harmless.n_refused", "integer", "refusals"),
        ("steering.judge.ablated", "object", "the chosen layer's direction ablated at every layer"),
        ("steering.judge.ablated.harmful", "object", "on the held-out harmful prompts"),
        ("steering.judge.ablated.harmful.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.ablated.harmful.ci_low", "number", "interval low"),
        ("steering.judge.ablated.harmful.ci_high", "number", "interval high"),
        ("steering.judge.ablated.harmful.n", "integer", "prompts"),
        ("steering.judge.ablated.harmful.n_refused", "integer", "refusals"),
        ("steering.judge.ablated.harmless", "object", "on the held-out harmless prompts"),
        ("steering.judge.ablated.harmless.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.ablated.harmless.ci_low", "number", "interval low"),
        ("steering.judge.ablated.harmless.ci_high", "number", "interval high"),
        ("steering.judge.ablated.harmless.n", "integer", "prompts"),
        ("steering.judge.ablated.harmless.n_refused", "integer", "refusals"),
        ("steering.judge.best", "object|null", "the vector added at `steering.best.multiplier`"),
        ("steering.judge.best.harmful", "object", "on the held-out harmful prompts"),
        ("steering.judge.best.harmful.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.best.harmful.ci_low", "number", "interval low"),
        ("steering.judge.best.harmful.ci_high", "number", "interval high"),
        ("steering.judge.best.harmful.n", "integer", "prompts"),
        ("steering.judge.best.harmful.n_refused", "integer", "refusals"),
        ("steering.judge.best.harmless", "object", "on the held-out harmless prompts"),
        ("steering.judge.best.harmless.rate", "number", "share of completions with a refusal phrase"),
        ("steering.judge.best.harmless.ci_low", "number", "interval low"),
        ("steering.judge.best.harmless.ci_high", "number", "interval high"),
        ("steering.judge.best.harmless.n", "integer", "prompts"),
        ("steering.judge.best.harmless.n_refused", "integer", "refusals"),
        ("steering.n_prompts", "integer", "harmful prompts scored"),
        ("steering.n_harmless", "integer", "harmless prompts for KL"),
    )
    figure_keys = ("dose_response",)

    def run(self, ctx: AuditContext) -> SteeringResult:
        from geomprobe.steering import search_layers
        from geomprobe.steering.judge import MATCHER_VERSION

        sizes = ctx.sizes
        hh = ctx.sets["harmful_harmless"]
        train_rows, held_rows = steering_rows(hh, sizes.steering_prompts, ctx.options.seed)
        positive = hh.label_names.index("harmful") if "harmful" in hh.label_names else 1
        harmful = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label == positive]
        harmless = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label != positive]
        layers = candidate_layers(ctx.layers, ctx.model.n_layers, sizes.max_layer_fraction, sizes.screen_layers)
        vector = build_vector(ctx.caches["harmful_harmless"], [f"blocks.{layer}.hook_resid_post" for layer in layers],
                              train_rows)
        unsteered = ctx.clock.run("steering", f"judging the unsteered model ({len(harmful)} + {len(harmless)} prompts, "
                                  f"{sizes.judge_tokens} tokens)",
                                  lambda: JudgedSetting(judge(ctx, harmful), judge(ctx, harmless)))
        choice = choose_layer_by_behaviour(ctx, vector, layers, harmful, harmless, unsteered.harmful)
        hook = choice.hook
        added = ctx.clock.run(
            "steering", f"dose-response at {hook} ({len(sizes.multipliers)} multipliers)",
            lambda: search_layers(ctx.model, vector, harmful, harmless_prompts=harmless, hooks=[hook],
                                  multipliers=sorted(ctx.sizes.multipliers), metric="refusal", mode="add",
                                  batch_size=ctx.options.batch_size))
        response = summarize_dose(added, choice.ablation_record)
        best = strongest_within_kl(response, sizes.kl_limit)
        best_judged = None
        if best is not None:
            steer = {"vector": vector.vector_for(hook), "multiplier": best.multiplier, "hooks": [hook]}
            best_judged = ctx.clock.run("steering", f"judging multiplier {best.multiplier:g} at {hook}",
                                        lambda: JudgedSetting(judge(ctx, harmful, **steer), judge(ctx, harmless, **steer)))
        return SteeringResult(
            hook=hook, layer=choice.layer, selection=choice.selection, selected_by=choice.selected_by,
            candidates=choice.candidates, vector_method="mean-diff", pooling="last",
            vector_norm=float(vector.norms[hook]), metric="refusal", baseline=response.baseline,
            multipliers=response.multipliers, refusal=response.refusal, refusal_delta=response.refusal_delta,
            kl=response.kl, kl_max=response.kl_max, ablation=response.ablation, best=best,
            judge=Judge(sizes.judge_tokens, MATCHER_VERSION, 0.95, unsteered, choice.ablated, best_judged),
            n_prompts=len(harmful), n_harmless=len(harmless),
            vector=vector, train_rows=train_rows, harmful=harmful, harmless=harmless, search=added,
        )

    def settings(self, ctx: AuditContext) -> dict[str, Any]:
        sizes = ctx.sizes
        return {"pooling": "last", "vector_method": "mean-diff", "metric": "refusal",
                "multipliers": sorted(float(m) for m in sizes.multipliers), "n_prompts_per_class": sizes.steering_prompts,
                "kl_limit": sizes.kl_limit, "max_layer_fraction": sizes.max_layer_fraction, "positions": "all",
                "judge_tokens": sizes.judge_tokens, "judge_candidates": sizes.judge_candidates,
                "screen_layers": sizes.screen_layers}

    def figures(self, ctx: AuditContext, result: SteeringResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.steering import dose_response

        return [ctx.save_figure("dose_response", self.name, "Refusal dose-response and KL side effect",
                                dose_response(result.search))]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        steer = metrics.get("steering") or {}
        if not steer:
            return []
        jd = steer.get("judge") or {}
        rows = [["steering layer", f"{steer.get('hook', '')} (chosen by {steer.get('selection', '')})"],
                ["refusal log-odds, unsteered", fmt(steer.get("baseline"))]]
        for setting, label in (("unsteered", "refusal rate, unsteered"), ("ablated", "refusal rate, direction ablated")):
            rec = jd.get(setting) or {}
            if rec:
                rows.append([f"{label} (harmful / harmless, {fmt(jd.get('max_new_tokens'))} tokens)",
                             f"{rate_text(rec.get('harmful'))} / {rate_text(rec.get('harmless'))}"])
        ab = steer.get("ablation") or {}
        if ab:
            rows.append(["with the direction ablated", f"{fmt(ab.get('refusal'))} (KL {fmt(ab.get('kl'))})"])
        sb = steer.get("best")
        rows.append(["strongest refusal within the KL limit",
                     f"{fmt(sb.get('refusal'))} at multiplier {fmt(sb.get('multiplier'))} (KL {fmt(sb.get('kl'))})"
                     if sb else "none: every multiplier exceeds the KL limit"])
        return rows

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        st = metrics["steering"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"{st.get('vector_method', '')} direction (harmful − harmless, pooling {st.get('pooling', '')}) added at "
            f"{st.get('hook', '')}, chosen by {st.get('selected_by', '')}; vector norm {fmt(st.get('vector_norm'))}. "
            f"Metric: refusal log-odds on {fmt(st.get('n_prompts'))} held-out harmful prompts; side effect: "
            f"KL(unsteered ‖ steered) on {fmt(st.get('n_harmless'))} harmless prompts, nats."
        )
        rows = [[fmt(x), fmt(r), fmt(d), fmt(k)] for x, r, d, k in zip(
            st.get("multipliers", []), st.get("refusal", []), st.get("refusal_delta", []), st.get("kl", []))]
        rows.insert(0, ["0 (unsteered)", fmt(st.get("baseline")), fmt(0.0), fmt(0.0)])
        ab = st.get("ablation") or {}
        if ab:
            rows.append(["ablated", fmt(ab.get("refusal")), fmt(ab.get("refusal_delta")), fmt(ab.get("kl"))])
        block.tables.append(Table("Dose-response", ["multiplier", "refusal log-odds", "Δ", "KL"], rows))
        jd = st.get("judge") or {}
        if jd:
            judged = [("unsteered", "unsteered", st.get("baseline")),
                      ("ablated", "direction ablated", (st.get("ablation") or {}).get("refusal"))]
            if jd.get("best"):
                judged.append(("best", f"multiplier {fmt((st.get('best') or {}).get('multiplier'))}",
                               (st.get("best") or {}).get("refusal")))
            rows = [[label, fmt(logodds), rate_text(jd[key].get("harmful")), rate_text(jd[key].get("harmless"))]
                    for key, label, logodds in judged if jd.get(key)]
            block.tables.append(Table(
                f"Behaviour: the judge's refusal rate beside the next-token log-odds at {st.get('hook', '')}",
                ["setting", "refusal log-odds (harmful)", "refusal rate, harmful", "refusal rate, harmless"], rows,
                note=f"Greedy generations of {fmt(jd.get('max_new_tokens'))} tokens, refusal-phrase matcher "
                     f"{jd.get('matcher_version', '')}; {float(jd.get('ci_level') or 0.95):.0%} bootstrap intervals over prompts.",
            ))
        cands = st.get("candidates") or []
        if cands:
            rows = [[fmt(c.get("layer")), fmt(c.get("refusal_delta")), fmt(c.get("kl")),
                     "yes" if c.get("within_kl") else "no", fmt(c.get("harmful_rate")) if c.get("judged") else "not judged"]
                    for c in cands]
            block.tables.append(Table(
                f"Layer choice ({st.get('selection', '')}): each candidate's direction ablated",
                ["layer", "Δ refusal log-odds", "KL (harmless)", "within KL limit", "refusal rate, harmful"], rows,
                note=str(st.get("selected_by", "")),
            ))
        return block


def rate_text(rec: Mapping[str, Any] | None) -> str:
    """A judged rate as "25% (4/16; 6%-50%)"."""
    if not rec:
        return "n/a"
    return (f"{rec['rate']:.0%} ({rec['n_refused']}/{rec['n']}; {rec['ci_low']:.0%}-{rec['ci_high']:.0%})")
