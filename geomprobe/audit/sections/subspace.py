"""Subspace section: overlap of the harmful and harmless activation subspaces at each audited layer.

Per class a centred basis holding ``subspace_energy`` of the energy (``last`` pooling); mode
subspace overlap with the analytic and an empirical random baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import HOOK_KIND, AuditContext, as_metrics, finite, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, where


@dataclass
class OverlapLayer:
    layer: int
    hook: str
    mso: float | None
    baseline: float | None
    baseline_empirical: float | None
    baseline_empirical_p95: float | None
    excess: float | None
    k_a: int
    k_b: int
    mean_diff_in_a: float | None
    mean_diff_in_b: float | None


@dataclass
class SubspaceResult:
    """metrics.json ``subspace``: per-layer overlap and its extremes over layers."""

    hook_kind: str
    pooling: str
    dtype: str
    labels: list[str]
    per_layer: list[OverlapLayer]
    mso: list[float | None]
    excess: list[float | None]
    max: float | None
    min: float | None
    argmin_layer: int
    layer_results: list[Any] = internal()  # geomprobe.subspace per-layer results, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def summarize_overlap(results: list[Any]) -> SubspaceResult:
    """The section's record of ``activation_overlap_by_layer`` results (NaN becomes None)."""
    per_layer = [OverlapLayer(
        layer=r.layer, hook=r.hook, mso=finite(r.mso), baseline=finite(r.baseline),
        baseline_empirical=finite(r.baseline_empirical), baseline_empirical_p95=finite(r.baseline_empirical_p95),
        excess=finite(r.mso - r.baseline_empirical), k_a=int(r.k_a), k_b=int(r.k_b),
        mean_diff_in_a=finite(r.mean_diff_in_a), mean_diff_in_b=finite(r.mean_diff_in_b),
    ) for r in results]
    mso = np.array([np.nan if r.mso is None else r.mso for r in per_layer])
    defined = bool(np.isfinite(mso).any())
    low = int(np.nanargmin(mso)) if defined else 0
    return SubspaceResult(
        hook_kind=HOOK_KIND, pooling="last", dtype="float64",
        labels=[results[0].label_a, results[0].label_b] if results else [], per_layer=per_layer,
        mso=[r.mso for r in per_layer], excess=[r.excess for r in per_layer],
        max=finite(np.nanmax(mso)) if defined else None, min=finite(np.nanmin(mso)) if defined else None,
        argmin_layer=per_layer[low].layer, layer_results=results,
    )


class SubspaceSection(AuditSection):
    name = "subspace"
    title = "Activation-subspace overlap"
    settings_key = "subspace"
    settings_fields = (
        ("settings.subspace", "object", "activation-subspace settings"),
        ("settings.subspace.pooling", "string", "pooling read"),
        ("settings.subspace.energy", "number", "energy fraction each class basis holds"),
        ("settings.subspace.n_draws", "integer", "random subspace pairs for the empirical baseline"),
        ("settings.subspace.centered", "bool", "activations centred per class before the basis"),
    )
    fields = (
        ("subspace", "object", "overlap of the harmful and harmless activation subspaces per layer"),
        ("subspace.hook_kind", "string", "hook kind read"),
        ("subspace.pooling", "string", "pooling read"),
        ("subspace.dtype", "string", "computation dtype (float64)"),
        ("subspace.labels", "list[string]", "[class A, class B]"),
        ("subspace.per_layer", "list[object]", "one record per audited layer"),
        ("subspace.per_layer[].layer", "integer", "block index"),
        ("subspace.per_layer[].hook", "string", "hook name"),
        ("subspace.per_layer[].mso", "number", "mode subspace overlap ||Qa^T Qb||_F^2 / min(ka, kb), in [0, 1]"),
        ("subspace.per_layer[].baseline", "number", "random baseline max(ka, kb) / d"),
        ("subspace.per_layer[].baseline_empirical", "number", "mean MSO of random subspace pairs of the same sizes"),
        ("subspace.per_layer[].baseline_empirical_p95", "number", "95th percentile of those"),
        ("subspace.per_layer[].excess", "number", "mso - baseline_empirical"),
        ("subspace.per_layer[].k_a", "integer", "basis size of class A"),
        ("subspace.per_layer[].k_b", "integer", "basis size of class B"),
        ("subspace.per_layer[].mean_diff_in_a", "number", "squared cosine of the class-mean difference with span(Qa)"),
        ("subspace.per_layer[].mean_diff_in_b", "number", "same with span(Qb)"),
        ("subspace.mso", "list[number]", "MSO per audited layer"),
        ("subspace.excess", "list[number]", "MSO minus the empirical random baseline per layer"),
        ("subspace.max", "number", "largest MSO"),
        ("subspace.min", "number", "smallest MSO"),
        ("subspace.argmin_layer", "integer", "layer of `subspace.min` (most distinct subspaces)"),
    )
    figure_keys = ("subspace_overlap",)

    def run(self, ctx: AuditContext) -> SubspaceResult:
        from geomprobe.subspace import activation_overlap_by_layer

        message = "subspace overlap on the --against model" if ctx.is_against else "activation-subspace overlap"
        results = ctx.clock.run("subspace", message, lambda: activation_overlap_by_layer(
            ctx.caches["harmful_harmless"], hooks=ctx.hooks, pooling="last", energy=ctx.sizes.subspace_energy,
            n_draws=ctx.sizes.n_draws, seed=ctx.options.seed, device=ctx.options.device))
        return summarize_overlap(results)

    def settings(self, ctx: AuditContext) -> dict[str, Any]:
        return {"pooling": "last", "energy": ctx.sizes.subspace_energy, "n_draws": ctx.sizes.n_draws, "centered": True}

    def figures(self, ctx: AuditContext, result: SubspaceResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.subspace import plot_activation_overlap

        title = f"{ctx.short_model_id}: harmful vs harmless subspaces ({HOOK_KIND}, last pooling)"
        return [ctx.save_figure("subspace_overlap", self.name, "Subspace overlap vs layer with random baseline; principal cosines",
                                plot_activation_overlap(result.layer_results, title=title))]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        sub = metrics.get("subspace") or {}
        return [["min subspace overlap (layer)", f"{fmt(sub.get('min'))} (layer {fmt(sub.get('argmin_layer'))})"]]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        sub = metrics["subspace"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"{' vs '.join(sub.get('labels', []))}; {where(sub)}; each class centred, basis holding "
            f"{fmt((metrics.get('settings') or {}).get('subspace', {}).get('energy'))} of its energy. MSO = mean squared "
            "cosine of the principal angles; random baseline max(k)/d."
        )
        rows = [
            [fmt(r.get("layer")), fmt(r.get("mso")), fmt(r.get("baseline")), fmt(r.get("baseline_empirical")),
             fmt(r.get("excess")), fmt(r.get("k_a")), fmt(r.get("k_b")), fmt(r.get("mean_diff_in_a")),
             fmt(r.get("mean_diff_in_b"))]
            for r in sub.get("per_layer", [])
        ]
        block.tables.append(Table("Overlap per layer", ["layer", "MSO", "baseline", "random pairs", "excess", "k_a", "k_b",
                                                        "mean diff in A", "mean diff in B"], rows))
        return block
