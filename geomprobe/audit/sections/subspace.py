"""Subspace section: overlap of the harmful and harmless activation subspaces at each audited layer.

Per class a centred basis holding ``energy`` (a size) of the energy (``last`` pooling); mode
subspace overlap with the analytic and an empirical random baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import HOOK_KIND, AuditContext, as_metrics, finite, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.paired import Paired, paired
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, where


@dataclass(frozen=True)
class SubspaceSizes:
    energy: float = size(0.9, doc="energy fraction each class basis holds")
    n_draws: int = size(100, 20, doc="random subspace pairs for the empirical baseline")


@dataclass
class SubspaceSettings:
    pooling: str = doc("pooling read")
    energy: float = doc("energy fraction each class basis holds")
    n_draws: int = doc("random subspace pairs for the empirical baseline")
    centered: bool = doc("activations centred per class before the basis")


@dataclass
class OverlapLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    mso: float | None = doc("mode subspace overlap ||Qa^T Qb||_F^2 / min(ka, kb), in [0, 1]")
    baseline: float | None = doc("random baseline max(ka, kb) / d")
    baseline_empirical: float | None = doc("mean MSO of random subspace pairs of the same sizes")
    baseline_empirical_p95: float | None = doc("95th percentile of those")
    excess: float | None = doc("mso - baseline_empirical")
    k_a: int = doc("basis size of class A")
    k_b: int = doc("basis size of class B")
    mean_diff_in_a: float | None = doc("squared cosine of the class-mean difference with span(Qa)")
    mean_diff_in_b: float | None = doc("same with span(Qb)")


@dataclass
class SubspaceResult:
    """metrics.json ``subspace``: per-layer overlap and its extremes over layers."""

    hook_kind: str = doc("hook kind read")
    pooling: str = doc("pooling read")
    dtype: str = doc("computation dtype (float64)")
    labels: list[str] = doc("[class A, class B]")
    per_layer: list[OverlapLayer] = doc("one record per audited layer")
    mso: list[float | None] = doc("MSO per audited layer")
    excess: list[float | None] = doc("MSO minus the empirical random baseline per layer")
    max: float | None = doc("largest MSO")
    min: float | None = doc("smallest MSO")
    argmin_layer: int = doc("layer of `subspace.min` (most distinct subspaces)")
    layer_results: list[Any] = internal()  # geomprobe.subspace per-layer results, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def summarize_overlap(results: list[Any]) -> SubspaceResult:
    """The section's record of ``activation_overlap_by_layer`` results (NaN becomes None)."""
    per_layer = [
        OverlapLayer(
            layer=r.layer,
            hook=r.hook,
            mso=finite(r.mso),
            baseline=finite(r.baseline),
            baseline_empirical=finite(r.baseline_empirical),
            baseline_empirical_p95=finite(r.baseline_empirical_p95),
            excess=finite(r.mso - r.baseline_empirical),
            k_a=int(r.k_a),
            k_b=int(r.k_b),
            mean_diff_in_a=finite(r.mean_diff_in_a),
            mean_diff_in_b=finite(r.mean_diff_in_b),
        )
        for r in results
    ]
    mso = np.array([np.nan if r.mso is None else r.mso for r in per_layer])
    defined = bool(np.isfinite(mso).any())
    low = int(np.nanargmin(mso)) if defined else 0
    return SubspaceResult(
        hook_kind=HOOK_KIND,
        pooling="last",
        dtype="float64",
        labels=[results[0].label_a, results[0].label_b] if results else [],
        per_layer=per_layer,
        mso=[r.mso for r in per_layer],
        excess=[r.excess for r in per_layer],
        max=finite(np.nanmax(mso)) if defined else None,
        min=finite(np.nanmin(mso)) if defined else None,
        argmin_layer=per_layer[low].layer,
        layer_results=results,
    )


class SubspaceSection(AuditSection):
    name = "subspace"
    title = "Activation-subspace overlap"
    description = "overlap of the harmful and harmless activation subspaces per layer"
    Sizes = SubspaceSizes
    result_type = SubspaceResult
    settings_key = "subspace"
    settings_type = SubspaceSettings
    settings_doc = "activation-subspace settings"
    comparison_type = Paired
    comparison_doc = "MSO per layer on both checkpoints"
    comparison_label = "MSO"
    figure_keys = ("subspace_overlap",)

    def run(self, ctx: AuditContext) -> SubspaceResult:
        from geomprobe.subspace import activation_overlap_by_layer

        message = "subspace overlap on the --against model" if ctx.is_against else "activation-subspace overlap"
        results = ctx.clock.run(
            "subspace",
            message,
            lambda: activation_overlap_by_layer(
                ctx.caches["harmful_harmless"],
                hooks=ctx.hooks,
                pooling="last",
                energy=ctx.sizes.subspace.energy,
                n_draws=ctx.sizes.subspace.n_draws,
                seed=ctx.options.seed,
                device=ctx.options.device,
            ),
        )
        return summarize_overlap(results)

    def settings(self, ctx: AuditContext) -> SubspaceSettings:
        return SubspaceSettings("last", ctx.sizes.subspace.energy, ctx.sizes.subspace.n_draws, True)

    def compare(self, a: SubspaceResult, b: SubspaceResult) -> Paired:
        return paired(a.per_layer, b.per_layer, "mso")

    def figures(self, ctx: AuditContext, result: SubspaceResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.subspace import plot_activation_overlap

        title = f"{ctx.short_model_id}: harmful vs harmless subspaces ({HOOK_KIND}, last pooling)"
        return [
            ctx.save_figure(
                "subspace_overlap",
                self.name,
                "Subspace overlap vs layer with random baseline; principal cosines",
                plot_activation_overlap(result.layer_results, title=title),
            )
        ]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        sub = metrics.get("subspace") or {}
        n = len(sub.get("per_layer", []))
        return [
            [
                f"subspace overlap, min over {n} layers (layer)",
                f"{fmt(sub.get('min'))} (layer {fmt(sub.get('argmin_layer'))}; an extreme over layers: multiple comparisons)",
            ]
        ]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        sub = metrics["subspace"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"{' vs '.join(sub.get('labels', []))}; {where(sub)}; each class centred, basis holding "
            f"{fmt((metrics.get('settings') or {}).get('subspace', {}).get('energy'))} of its energy. MSO = mean squared "
            "cosine of the principal angles; random baseline max(k)/d."
        )
        rows = [
            [
                fmt(r.get("layer")),
                fmt(r.get("mso")),
                fmt(r.get("baseline")),
                fmt(r.get("baseline_empirical")),
                fmt(r.get("excess")),
                fmt(r.get("k_a")),
                fmt(r.get("k_b")),
                fmt(r.get("mean_diff_in_a")),
                fmt(r.get("mean_diff_in_b")),
            ]
            for r in sub.get("per_layer", [])
        ]
        block.tables.append(
            Table(
                "Overlap per layer",
                ["layer", "MSO", "baseline", "random pairs", "excess", "k_a", "k_b", "mean diff in A", "mean diff in B"],
                rows,
            )
        )
        return block
