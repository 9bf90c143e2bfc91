"""Steering section: dose-response of the harmful - harmless direction at one layer.

The layer is the audited one of highest AQI below ``max_layer_fraction`` of the depth (so it
needs the AQI section's result). The mean-difference vector is built from the harmful-harmless
rows that are not held out; on the held-out prompts: refusal log-odds per multiplier, the KL side
effect on harmless prompts, and the direction ablated instead of added.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, as_metrics, finite, hook_at, internal
from geomprobe.audit.sections.base import AuditSection
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
class SteeringResult:
    """metrics.json ``steering``; the vector, prompts and rows stay for the comparison section."""

    hook: str
    layer: int
    selected_by: str
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
    n_prompts: int
    n_harmless: int
    vector: Any = internal()  # the SteeringVector added
    train_rows: Any = internal()  # harmful-harmless rows the vector was built from
    harmful: list[str] = internal()  # held-out prompts scored for refusal
    harmless: list[str] = internal()  # held-out prompts for the KL side effect
    search: Any = internal()  # the multiplier search result, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def choose_steering_layer(aqi_section: Mapping[str, Any], n_layers: int, max_layer_fraction: float = 0.8) -> tuple[int, str]:
    """The audited layer of highest AQI below ``max_layer_fraction`` of the depth (fallback: shallowest)."""
    limit = int(math.floor(max_layer_fraction * n_layers))
    candidates = [r for r in aqi_section["per_layer"] if r["layer"] < limit and r["aqi"] is not None]
    how = f"highest AQI among audited layers below {max_layer_fraction:.0%} of depth"
    if not candidates:
        candidates = sorted(aqi_section["per_layer"], key=lambda r: r["layer"])[:1]
        how = "shallowest audited layer (no audited layer below the depth limit)"
    best = max(candidates, key=lambda r: (r["aqi"] if r["aqi"] is not None else -1.0, -r["layer"]))
    return int(best["layer"]), how


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


def build_vector(cache: Path, hook: str, rows: np.ndarray) -> Any:
    """The harmful - harmless mean-difference vector at ``hook`` from ``rows`` of the cache."""
    from geomprobe.activations.store import open_cache
    from geomprobe.steering import build_from_arrays

    with open_cache(cache) as handle:
        X = handle.read(hook, "last")[rows]
        labels, names, model_id = handle.labels[rows], handle.label_names, handle.model_id
    return build_from_arrays({hook: X}, labels, names, method="mean-diff", pooling="last", model_id=model_id,
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
    """The records of :func:`dose` as stored in metrics.json (multipliers ascending)."""
    recs = sorted((r for r in added.records if r.multiplier is not None), key=lambda r: r.multiplier)
    ab = ablated.records[0]
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
    )
    fields = (
        ("steering", "object", "dose-response of the harmful-harmless direction at one layer"),
        ("steering.hook", "string", "hook the vector is added at"),
        ("steering.layer", "integer", "its block index"),
        ("steering.selected_by", "string", "how the layer was chosen"),
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
        ("steering.n_prompts", "integer", "harmful prompts scored"),
        ("steering.n_harmless", "integer", "harmless prompts for KL"),
    )
    figure_keys = ("dose_response",)

    def run(self, ctx: AuditContext) -> SteeringResult:
        sizes = ctx.sizes
        layer, selected_by = choose_steering_layer(ctx.results["aqi"].to_dict(), ctx.model.n_layers, sizes.max_layer_fraction)
        hook = hook_at(layer)
        hh = ctx.sets["harmful_harmless"]
        train_rows, held_rows = steering_rows(hh, sizes.steering_prompts, ctx.options.seed)
        positive = hh.label_names.index("harmful") if "harmful" in hh.label_names else 1
        harmful = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label == positive]
        harmless = [user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label != positive]
        vector = build_vector(ctx.caches["harmful_harmless"], hook, train_rows)
        added, ablated = ctx.clock.run(
            "steering", f"dose-response at {hook} ({len(sizes.multipliers)} multipliers + ablation)",
            lambda: dose(ctx, vector, hook, harmful, harmless))
        response = summarize_dose(added, ablated)
        return SteeringResult(
            hook=hook, layer=layer, selected_by=selected_by, vector_method="mean-diff", pooling="last",
            vector_norm=float(vector.norms[hook]), metric="refusal", baseline=response.baseline,
            multipliers=response.multipliers, refusal=response.refusal, refusal_delta=response.refusal_delta,
            kl=response.kl, kl_max=response.kl_max, ablation=response.ablation,
            best=strongest_within_kl(response, sizes.kl_limit), n_prompts=len(harmful), n_harmless=len(harmless),
            vector=vector, train_rows=train_rows, harmful=harmful, harmless=harmless, search=added,
        )

    def settings(self, ctx: AuditContext) -> dict[str, Any]:
        sizes = ctx.sizes
        return {"pooling": "last", "vector_method": "mean-diff", "metric": "refusal",
                "multipliers": sorted(float(m) for m in sizes.multipliers), "n_prompts_per_class": sizes.steering_prompts,
                "kl_limit": sizes.kl_limit, "max_layer_fraction": sizes.max_layer_fraction, "positions": "all"}

    def figures(self, ctx: AuditContext, result: SteeringResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.steering import dose_response

        return [ctx.save_figure("dose_response", self.name, "Refusal dose-response and KL side effect",
                                dose_response(result.search))]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        steer = metrics.get("steering") or {}
        if not steer:
            return []
        rows = [["steering layer", f"{steer.get('hook', '')} ({steer.get('selected_by', '')})"],
                ["refusal log-odds, unsteered", fmt(steer.get("baseline"))]]
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
        return block
