"""AQI section: how well harmful and harmless prompts separate at each audited layer.

``aqi_by_layer`` on the harmful-harmless cache (``last`` pooling) with a stratified bootstrap
interval and a label-permutation p-value; plots AQI by layer and a 2-D PCA grid. Every cluster index
registered with :func:`geomprobe.aqi.register_index` beyond the paper's four is reported per layer
(``extra``, with its interval in ``extra_ci``), plotted and tabled too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from geomprobe.audit.context import HOOK_KIND, AuditContext, as_metrics, finite, hook_at, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.paired import Paired, paired
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, where


@dataclass(frozen=True)
class AqiSizes:
    n_bootstrap: int = size(100, 50, doc="stratified bootstrap replicates for the interval")
    n_permutations: int = size(100, 50, doc="label permutations for the p-value")
    max_points: int = size(1000, doc="rows used for resampling at most (stratified subsample above it)")
    pca_panels: int = size(8, 4, doc="layers in the PCA grid plot")


@dataclass
class AqiSettings:
    pooling: str = doc("pooling read (`last`: last token of the rendered prompt)")
    n_bootstrap: int = doc("stratified bootstrap replicates for the interval")
    n_permutations: int = doc("label permutations for the p-value")
    ci_level: float = doc("interval level")
    max_points: int = doc("rows used for resampling at most (stratified subsample above it)")
    gamma: float = doc("AQI weight of the Davies-Bouldin term")


@dataclass
class AqiLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    n: int = doc("rows used")
    aqi: float | None = doc("AQI = 0.5/(1+DBS) + 0.5*DI/(1+DI), in [0, 1]")
    ci_low: float | None = doc("bootstrap interval low end")
    ci_high: float | None = doc("bootstrap interval high end")
    p_value: float | None = doc("label-permutation p-value of AQI (null: not tested)", type="number|null")
    davies_bouldin: float | None = doc("Davies-Bouldin index (lower = better separated; null = inf)")
    dunn: float | None = doc("Dunn index (higher = better; set by single extreme pairs)")
    xie_beni: float | None = doc("hard Xie-Beni index (lower = better; null = inf)")
    calinski_harabasz: float | None = doc("Calinski-Harabasz index (higher = better)")
    extra: dict[str, float | None] = doc(
        "each registered index of `aqi.extra_indices` (name -> value)", items=("the index's value (null = inf or undefined)",)
    )
    extra_ci: dict[str, list[float | None]] = doc(
        "bootstrap interval of each registered index (same resampling as AQI)", items=("[low, high]",)
    )


@dataclass
class AqiResult:
    """metrics.json ``aqi``: per-layer AQI and indices, and their extremes over layers."""

    hook_kind: str = doc("hook kind read")
    pooling: str = doc("pooling read")
    dtype: str = doc("computation dtype (float64)")
    labels: list[str] = doc("[negative, positive] classes")
    extra_indices: dict[str, str] = doc(
        "cluster indices registered beyond the four (geomprobe.aqi.register_index)", items=("the index's title (name -> title)",)
    )
    per_layer: list[AqiLayer] = doc("one record per audited layer")
    aqi: list[float | None] = doc("AQI per audited layer (same order as `settings.layers`)")
    max: float | None = doc("largest AQI over layers (a maximum over layers on the same rows: optimistic)")
    argmax_layer: int = doc("layer of `aqi.max`")
    min: float | None = doc("smallest AQI over layers")
    mean: float | None = doc("mean AQI over layers")
    layer_results: list[Any] = internal()  # geomprobe.aqi per-layer results, for the plot

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def summarize_aqi(results: list[Any]) -> AqiResult:
    """The section's record of ``aqi_by_layer`` results (NaN and infinity become None)."""
    from geomprobe.aqi import INDEX_INFO

    per_layer = [
        AqiLayer(
            layer=r.layer,
            hook=r.hook,
            n=r.n,
            aqi=finite(r.aqi),
            ci_low=finite(r.aqi_ci_low),
            ci_high=finite(r.aqi_ci_high),
            p_value=finite(r.p_value),
            davies_bouldin=finite(r.davies_bouldin),
            dunn=finite(r.dunn),
            xie_beni=finite(r.xie_beni),
            calinski_harabasz=finite(r.calinski_harabasz),
            extra={k: finite(v) for k, v in r.extra.items()},
            extra_ci={k: [finite(v) for v in r.ci[k]] for k in r.extra},
        )
        for r in results
    ]
    extra_names = list(results[0].extra) if results else []
    values = np.array([np.nan if r.aqi is None else r.aqi for r in per_layer])
    defined = bool(np.isfinite(values).any())
    best = int(np.nanargmax(values)) if defined else 0
    return AqiResult(
        hook_kind=HOOK_KIND,
        pooling="last",
        dtype="float64",
        labels=list(results[0].n_per_class) if results else [],
        extra_indices={k: INDEX_INFO[k].title if k in INDEX_INFO else k for k in extra_names},
        per_layer=per_layer,
        aqi=[r.aqi for r in per_layer],
        max=finite(np.nanmax(values)) if defined else None,
        argmax_layer=per_layer[best].layer,
        min=finite(np.nanmin(values)) if defined else None,
        mean=finite(np.nanmean(values)) if defined else None,
        layer_results=results,
    )


def pca_layers(layers: list[int], best: int, panels: int) -> list[int]:
    """At most ``panels`` layers spread over depth for the PCA grid, always including ``best``."""
    if len(layers) <= panels:
        return list(layers)
    picks = {layers[int(round(i))] for i in np.linspace(0, len(layers) - 1, max(panels - 1, 2))}
    picks.add(best)
    ordered = sorted(picks)
    while len(ordered) > panels:  # drop the neighbour of the best layer first, never the best
        drop = min((v for v in ordered if v != best), key=lambda v: abs(v - best))
        ordered.remove(drop)
    return ordered


def _extra_value(rec: AqiLayer, name: str) -> float | None:
    return rec.extra.get(name)


@dataclass
class AqiPaired(Paired):
    """AQI per layer on both checkpoints, and every registered cluster index the same way."""

    extra: dict[str, Paired] = doc(
        "each registered index of `aqi.extra_indices` on both checkpoints (name -> per-layer pairs)",
        items=("the index per layer on a and b, and b - a",),
    )


class GeometrySection(AuditSection):
    name = "aqi"
    title = "AQI: harmful vs harmless separation"
    description = "Alignment Quality Index of harmful vs harmless prompts per layer"
    Sizes = AqiSizes
    result_type = AqiResult
    settings_key = "aqi"
    settings_type = AqiSettings
    settings_doc = "AQI settings"
    comparison_type = AqiPaired
    comparison_doc = "AQI and each registered cluster index per layer on both checkpoints"
    comparison_label = "AQI"
    figure_keys = ("aqi_layers", "pca_grid")

    def run(self, ctx: AuditContext) -> AqiResult:
        from geomprobe.aqi import aqi_by_layer

        sizes = ctx.sizes.aqi
        message = (
            "AQI on the --against model"
            if ctx.is_against
            else f"AQI with {sizes.n_bootstrap} bootstrap / {sizes.n_permutations} permutations per layer"
        )
        results = ctx.clock.run(
            "aqi",
            message,
            lambda: aqi_by_layer(
                ctx.caches["harmful_harmless"],
                hooks=ctx.hooks,
                pooling="last",
                n_bootstrap=sizes.n_bootstrap,
                n_permutations=sizes.n_permutations,
                max_points=sizes.max_points,
                seed=ctx.options.seed,
                device=ctx.options.device,
            ),
        )
        return summarize_aqi(results)

    def settings(self, ctx: AuditContext) -> AqiSettings:
        sizes = ctx.sizes.aqi
        return AqiSettings("last", sizes.n_bootstrap, sizes.n_permutations, 0.95, sizes.max_points, 0.5)

    def compare(self, a: AqiResult, b: AqiResult) -> AqiPaired:
        aqi = paired(a.per_layer, b.per_layer, "aqi")
        extra = {
            name: paired(a.per_layer, b.per_layer, partial(_extra_value, name=name))
            for name in a.extra_indices
            if name in b.extra_indices
        }
        return AqiPaired(aqi.per_layer, aqi.delta, aqi.max_abs_delta, extra)

    def figures(self, ctx: AuditContext, result: AqiResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.activations.store import open_cache
        from geomprobe.plots.geometry import plot_aqi_layers
        from geomprobe.plots.overview import plot_pca_grid

        model_id = ctx.short_model_id
        from geomprobe.aqi import INDEX_INFO

        logs = [k for k in result.extra_indices if k in INDEX_INFO and INDEX_INFO[k].log_scale]
        refs = [
            ctx.save_figure(
                "aqi_layers",
                self.name,
                "AQI by layer with bootstrap band, and each cluster index",
                plot_aqi_layers(result.layer_results, model_id=model_id, index_titles=result.extra_indices, log_indices=logs),
            )
        ]
        with open_cache(ctx.caches["harmful_harmless"]) as handle:
            labels = handle.labels.tolist()
            acts = {
                layer: handle.read(hook_at(layer), "last")
                for layer in pca_layers(ctx.layers, result.argmax_layer, ctx.sizes.aqi.pca_panels)
            }
            names = list(handle.label_names)
        refs.append(
            ctx.save_figure(
                "pca_grid",
                self.name,
                "2-D PCA projection of both classes",
                plot_pca_grid(
                    acts,
                    labels,
                    class_names=names,
                    model_id=model_id,
                    hook_kind=HOOK_KIND,
                    pooling="last",
                    highlight=result.argmax_layer,
                ),
            )
        )
        return refs

    def summary_line(self, metrics: dict[str, Any]) -> str:
        aqi = metrics["aqi"]
        return f"AQI max over {len(aqi.get('per_layer', []))} layers {fmt(aqi['max'])} at layer {aqi['argmax_layer']}"

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        aqi = metrics.get("aqi") or {}
        n = len(aqi.get("per_layer", []))
        return [
            [
                f"AQI, max over {n} layers (layer)",
                f"{fmt(aqi.get('max'))} (layer {fmt(aqi.get('argmax_layer'))}; a maximum over layers on the same rows: "
                f"optimistic, multiple comparisons; mean over layers {fmt(aqi.get('mean'))})",
            ]
        ]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        a = metrics["aqi"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"{' vs '.join(a.get('labels', []))}; {where(a)}. AQI = 0.5/(1+DBS) + 0.5·DI/(1+DI) on raw activations "
            "(0 = no separation, 1 = perfect); interval: stratified bootstrap (resampled rows repeat, which moves Dunn, "
            "so at small n the interval can sit beside the estimate); p: label permutations. Dunn is set by single "
            "extreme pairs. `aqi.max` is a maximum over the audited layers, chosen on the rows it is computed on: "
            "read it as an upper envelope (multiple comparisons), not as a held-out estimate; each layer's own "
            "interval and p-value are in the table."
        )
        extra = list(a.get("extra_indices") or {})  # registered indices: one column with its interval each

        def registered(r: dict[str, Any], name: str) -> str:
            low, high = (r.get("extra_ci") or {}).get(name) or [None, None]
            return f"{fmt((r.get('extra') or {}).get(name))} ({fmt(low)} – {fmt(high)})"

        rows = [
            [
                fmt(r.get("layer")),
                fmt(r.get("aqi")),
                f"{fmt(r.get('ci_low'))} – {fmt(r.get('ci_high'))}",
                fmt(r.get("p_value")),
                fmt(r.get("davies_bouldin")),
                fmt(r.get("dunn")),
                fmt(r.get("xie_beni")),
                fmt(r.get("calinski_harabasz")),
                *[registered(r, name) for name in extra],
                fmt(r.get("n")),
            ]
            for r in a.get("per_layer", [])
        ]
        header = [
            "layer",
            "AQI",
            "interval",
            "p",
            "DBS",
            "Dunn",
            "XBI",
            "CHI",
            *[f"{a['extra_indices'][name]} (interval)" for name in extra],
            "n",
        ]
        block.tables.append(Table("AQI per layer", header, rows))
        return block
