"""Steering section: dose-response of the harmful - harmless direction at one layer, and behaviour.

The mean-difference vector is built from the harmful-harmless rows that are not held out. The
layer is chosen by behaviour on the held-out prompts (:mod:`geomprobe.audit.sections.behaviour`:
the layer whose direction, ablated, removes the most refusals by the judge). At that layer: the
refusal log-odds per multiplier, the KL side effect on harmless prompts, the direction ablated
instead of added, and the judge's refusal rates (greedy generations, bootstrap intervals) beside
the log-odds for the unsteered model, the ablation and the strongest multiplier within the KL limit.
"""

from __future__ import annotations

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
from geomprobe.audit.sections.steering_report import report_block, summary_rows
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import FigureRef, ReportBlock, fmt
from geomprobe.core.errors import GeomprobeError


@dataclass(frozen=True)
class SteeringSizes:
    n_prompts_per_class: int = size(16, 8, doc="held-out harmful (metric) and harmless (KL) prompts, not in the vector")
    # A mean-diff vector at multiplier 1 adds one whole class-mean difference.
    multipliers: tuple[float, ...] = size(
        (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0), (-2.0, -1.0, 1.0, 2.0), doc="multipliers of the vector tried"
    )
    kl_limit: float = size(0.1, doc="largest mean KL accepted for `steering.best`")
    max_layer_fraction: float = size(0.8, doc="layers at or above this fraction of depth are not chosen")
    judge_tokens: int = size(24, 12, doc="greedy tokens the judge reads (refusals show in the first few)")
    judge_candidates: int = size(3, 2, doc="layers judged by generation after the ablation screen")
    screen_layers: int = size(8, 4, doc="candidate layers screened (evenly spaced; each costs a pass over the prompts)")
    judge_bootstrap: int = size(1000, 500, doc="bootstrap replicates of the judge's rate intervals")

    def __post_init__(self) -> None:
        if self.n_prompts_per_class < 1 or not self.multipliers:
            raise GeomprobeError("audit steering sizes need n_prompts_per_class >= 1 and some multipliers")


@dataclass
class SteeringSettings:
    pooling: str = doc("pooling the vector was read with")
    vector_method: str = doc("how the direction was built (`mean-diff`: harmful - harmless)")
    metric: str = doc("behaviour metric (`refusal`: log-odds of a refusal first token)")
    multipliers: list[float] = doc("multipliers of the vector tried")
    n_prompts_per_class: int = doc("held-out harmful (metric) and harmless (KL) prompts")
    kl_limit: float = doc("largest mean KL accepted for `steering.best`")
    max_layer_fraction: float = doc("layers at or above this fraction of depth are not chosen")
    positions: str = doc("positions the vector is added at")
    judge_tokens: int = doc("greedy tokens generated per prompt for the judge's refusal rate")
    judge_candidates: int = doc("candidate layers judged by generation after the ablation screen")
    screen_layers: int = doc("candidate layers screened at most (evenly spaced)")


@dataclass
class Ablation:
    refusal: float | None = doc("mean refusal log-odds")
    refusal_delta: float | None = doc("minus the baseline")
    kl: float | None = doc("mean KL on harmless prompts")


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
    multiplier: float = doc("multiplier")
    refusal: float = doc("mean refusal log-odds")
    kl: float | None = doc("mean KL")


@dataclass
class Judge:
    """The judge's refusal rates beside the log-odds: unsteered, ablated, at the best multiplier."""

    max_new_tokens: int = doc("tokens generated per prompt")
    matcher_version: str = doc("refusal-phrase list the rates are comparable under")
    ci_level: float = doc("level of the percentile-bootstrap intervals over prompts")
    unsteered: JudgedSetting = doc("the unsteered model")
    ablated: JudgedSetting = doc("the chosen layer's direction ablated at every layer")
    best: JudgedSetting | None = doc("the vector added at `steering.best.multiplier`")


@dataclass
class SteeringResult:
    """metrics.json ``steering``; the vector, prompts and rows stay for the comparison section."""

    hook: str = doc("hook the vector is added at")
    layer: int = doc("its block index")
    selection: str = doc(
        "what chose the layer: `behaviour` (the judge's refusal-rate drop with the direction ablated), "
        "`next-token log-odds` (no held-out refusals to remove) or `only candidate`"
    )
    selected_by: str = doc("how the layer was chosen, in words")
    candidates: list[Candidate] = doc("every candidate layer (audited, below `max_layer_fraction` of depth)")
    vector_method: str = doc("direction method")
    pooling: str = doc("pooling the direction was read with")
    vector_norm: float = doc("L2 norm of the vector at multiplier 1")
    metric: str = doc("behaviour metric on harmful prompts")
    baseline: float | None = doc("unsteered mean refusal log-odds on the held-out harmful prompts")
    multipliers: list[float] = doc("multipliers, ascending")
    refusal: list[float | None] = doc("mean refusal log-odds per multiplier")
    refusal_delta: list[float | None] = doc("refusal - baseline per multiplier")
    kl: list[float | None] = doc("mean KL(unsteered || steered) on harmless prompts per multiplier, nats")
    kl_max: list[float | None] = doc("largest per-prompt KL per multiplier")
    ablation: Ablation = doc("the direction projected out at every layer instead of added")
    best: BestDose | None = doc("multiplier with the highest refusal whose KL <= kl_limit")
    judge: Judge = doc("refusal rates from greedy generations (phrase matcher, `geomprobe.steering.judge`)")
    n_prompts: int = doc("harmful prompts scored")
    n_harmless: int = doc("harmless prompts for KL")
    vector: Any = internal()  # the SteeringVector added
    train_rows: Any = internal()  # harmful-harmless rows the vector was built from
    harmful: list[str] = internal()  # held-out prompts scored for refusal
    harmless: list[str] = internal()  # held-out prompts for the KL side effect
    search: Any = internal()  # the multiplier search result, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


@dataclass
class OwnDirection:
    """The steering section on the ``--against`` checkpoint b: b's own direction at a's hook, on a's held-out prompts."""

    hook: str
    response: DoseResponse
    unsteered: JudgedSetting  # the judge on b, unsteered (the delta section pairs it with a's)


@dataclass
class SteeringOnBoth:
    hook: str = doc("hook")
    baseline_a: float | None = doc("unsteered refusal log-odds on a")
    baseline_b: float | None = doc("unsteered refusal log-odds on b")
    baseline_delta: float | None = doc("b - a")
    refusal_b: list[float | None] = doc("b's own direction on b: refusal per multiplier")
    kl_b: list[float | None] = doc("its KL per multiplier")


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
    return build_from_arrays(
        arrays,
        labels,
        names,
        method="mean-diff",
        pooling="last",
        model_id=model_id,
        metadata={"source": "audit", "rows": "harmful-harmless rows not held out for steering"},
    )


def dose(ctx: AuditContext, vector: Any, hook: str, harmful: list[str], harmless: list[str]) -> tuple[Any, Any]:
    """``vector`` added at ``hook`` on ``ctx``'s model for each multiplier, and ablated: the two search results."""
    from geomprobe.steering import search_layers

    batch_size = ctx.options.batch_size
    added = search_layers(
        ctx.model,
        vector,
        harmful,
        harmless_prompts=harmless,
        hooks=[hook],
        multipliers=sorted(ctx.sizes.steering.multipliers),
        metric="refusal-log-odds",
        mode="add",
        batch_size=batch_size,
    )
    ablated = search_layers(
        ctx.model,
        vector,
        harmful,
        harmless_prompts=harmless,
        hooks=[hook],
        metric="refusal-log-odds",
        mode="ablate",
        batch_size=batch_size,
    )
    return added, ablated


def summarize_dose(added: Any, ablated: Any) -> DoseResponse:
    """The records of :func:`dose` as stored in metrics.json (multipliers ascending); ``ablated`` is a
    search result or one of its records."""
    recs = sorted((r for r in added.records if r.multiplier is not None), key=lambda r: r.multiplier)
    ab = ablated.records[0] if hasattr(ablated, "records") else ablated
    return DoseResponse(
        baseline=finite(added.baseline),
        multipliers=[float(r.multiplier) for r in recs],
        refusal=[finite(r.score_mean) for r in recs],
        refusal_delta=[finite(r.score_delta) for r in recs],
        kl=[finite(r.kl_mean) for r in recs],
        kl_max=[finite(r.kl_max) for r in recs],
        ablation=Ablation(finite(ab.score_mean), finite(ab.score_delta), finite(ab.kl_mean)),
    )


def own_direction(ctx: AuditContext, audited: SteeringResult) -> OwnDirection:
    """On the second checkpoint: its own direction (same training rows) at the audited checkpoint's hook,
    dosed on the same held-out prompts, and the judge on it unsteered; the layer search is a's."""
    hook, harmful, harmless = audited.hook, audited.harmful, audited.harmless
    vector = build_vector(ctx.caches["harmful_harmless"], hook, audited.train_rows)
    response = summarize_dose(
        *ctx.clock.run("steering", f"the second model's own vector at {hook}", lambda: dose(ctx, vector, hook, harmful, harmless))
    )
    unsteered = ctx.clock.run(
        "steering",
        f"judging the --against model ({len(harmful)} + {len(harmless)} prompts)",
        lambda: JudgedSetting(judge(ctx, harmful), judge(ctx, harmless)),
    )
    return OwnDirection(hook, response, unsteered)


def strongest_within_kl(response: DoseResponse, kl_limit: float) -> BestDose | None:
    """The multiplier of highest refusal whose KL is at most ``kl_limit`` (None when none is)."""
    ok = [
        (m, r, k)
        for m, r, k in zip(response.multipliers, response.refusal, response.kl)
        if r is not None and (k is None or k <= kl_limit)
    ]
    if not ok:
        return None
    m, r, k = max(ok, key=lambda t: t[1])
    return BestDose(m, r, k)


class SteeringSection(AuditSection):
    name = "steering"
    title = "Steering dose-response"
    description = "dose-response of the harmful-harmless direction at one layer"
    Sizes = SteeringSizes
    result_type = SteeringResult
    settings_key = "steering"
    settings_type = SteeringSettings
    settings_doc = "steering settings"
    comparison_type = SteeringOnBoth
    comparison_doc = "refusal on both checkpoints at the steering hook"
    figure_keys = ("dose_response",)

    def run(self, ctx: AuditContext) -> SteeringResult | OwnDirection:
        if ctx.audited is not None:
            return own_direction(ctx, ctx.audited.results[self.name])
        return self.run_audited(ctx)

    def run_audited(self, ctx: AuditContext) -> SteeringResult:
        from geomprobe.steering import search_layers
        from geomprobe.steering.judge import MATCHER_VERSION

        sizes = ctx.sizes.steering
        hh = ctx.sets["harmful_harmless"]
        train_rows, held_rows = steering_rows(hh, sizes.n_prompts_per_class, ctx.options.seed)
        positive = hh.label_names.index("harmful") if "harmful" in hh.label_names else 1
        harmful = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label == positive]
        harmless = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label != positive]
        layers = candidate_layers(ctx.layers, ctx.model.n_layers, sizes.max_layer_fraction, sizes.screen_layers)
        vector = build_vector(ctx.caches["harmful_harmless"], [f"blocks.{layer}.hook_resid_post" for layer in layers], train_rows)
        unsteered = ctx.clock.run(
            "steering",
            f"judging the unsteered model ({len(harmful)} + {len(harmless)} prompts, {sizes.judge_tokens} tokens)",
            lambda: JudgedSetting(judge(ctx, harmful), judge(ctx, harmless)),
        )
        choice = choose_layer_by_behaviour(ctx, vector, layers, harmful, harmless, unsteered.harmful)
        hook = choice.hook
        added = ctx.clock.run(
            "steering",
            f"dose-response at {hook} ({len(sizes.multipliers)} multipliers)",
            lambda: search_layers(
                ctx.model,
                vector,
                harmful,
                harmless_prompts=harmless,
                hooks=[hook],
                multipliers=sorted(sizes.multipliers),
                metric="refusal-log-odds",
                mode="add",
                batch_size=ctx.options.batch_size,
            ),
        )
        response = summarize_dose(added, choice.ablation_record)
        best = strongest_within_kl(response, sizes.kl_limit)
        best_judged = None
        if best is not None:
            steer = {"vector": vector.vector_for(hook), "multiplier": best.multiplier, "hooks": [hook]}
            best_judged = ctx.clock.run(
                "steering",
                f"judging multiplier {best.multiplier:g} at {hook}",
                lambda: JudgedSetting(judge(ctx, harmful, **steer), judge(ctx, harmless, **steer)),
            )
        return SteeringResult(
            hook=hook,
            layer=choice.layer,
            selection=choice.selection,
            selected_by=choice.selected_by,
            candidates=choice.candidates,
            vector_method="mean-diff",
            pooling="last",
            vector_norm=float(vector.norms[hook]),
            metric="refusal",
            baseline=response.baseline,
            multipliers=response.multipliers,
            refusal=response.refusal,
            refusal_delta=response.refusal_delta,
            kl=response.kl,
            kl_max=response.kl_max,
            ablation=response.ablation,
            best=best,
            judge=Judge(sizes.judge_tokens, MATCHER_VERSION, 0.95, unsteered, choice.ablated, best_judged),
            n_prompts=len(harmful),
            n_harmless=len(harmless),
            vector=vector,
            train_rows=train_rows,
            harmful=harmful,
            harmless=harmless,
            search=added,
        )

    def settings(self, ctx: AuditContext) -> SteeringSettings:
        sizes = ctx.sizes.steering
        return SteeringSettings(
            "last",
            "mean-diff",
            "refusal",
            sorted(float(m) for m in sizes.multipliers),
            sizes.n_prompts_per_class,
            sizes.kl_limit,
            sizes.max_layer_fraction,
            "all",
            sizes.judge_tokens,
            sizes.judge_candidates,
            sizes.screen_layers,
        )

    def compare(self, a: SteeringResult, b: OwnDirection) -> SteeringOnBoth:
        base_a, base_b = a.baseline, b.response.baseline
        return SteeringOnBoth(
            a.hook,
            base_a,
            base_b,
            None if base_a is None or base_b is None else base_b - base_a,
            b.response.refusal,
            b.response.kl,
        )

    def figures(self, ctx: AuditContext, result: SteeringResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.steering import dose_response

        return [
            ctx.save_figure("dose_response", self.name, "Refusal dose-response and KL side effect", dose_response(result.search))
        ]

    def summary_line(self, metrics: dict[str, Any]) -> str:
        steer = metrics["steering"]
        return f"refusal log-odds {fmt(steer['baseline'])} unsteered at {steer['hook']}"

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        return summary_rows(metrics)

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        return report_block(self.name, self.title, metrics)
