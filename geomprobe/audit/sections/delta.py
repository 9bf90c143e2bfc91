"""Delta section (``--against``): paired changes b - a with bootstrap intervals and p-values.

Both checkpoints saw the same prompts, so the changes are paired: each bootstrap replicate draws
one set of prompt indices (stratified by class, with replacement) and recomputes the statistic on
both models from those same rows. That keeps the prompt-to-prompt variation common to both
models out of the interval of the change. Per audited layer: AQI on the harmful-harmless set;
and the judge's refusal rate on the steering section's held-out harmful and harmless prompts.

Interval: percentile of the replicate deltas. p-value (two-sided, no change as the null):
``min(1, 2 * (1 + min(#{delta* <= 0}, #{delta* >= 0})) / (1 + n_bootstrap))``. Gate a checkpoint
on these with ``--fail-if "delta.aqi.min<-0.05"`` (see docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, as_metrics, finite
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import ReportBlock, Table, fmt
from geomprobe.core import stats
from geomprobe.core.stats import bootstrap_p_value  # noqa: F401  (kept importable from here)

P_RULE = "min(1, 2 * (1 + min(#{delta* <= 0}, #{delta* >= 0})) / (1 + n_bootstrap))"


@dataclass(frozen=True)
class DeltaSizes:
    n_bootstrap: int = size(100, 50, doc="paired bootstrap replicates of the AQI change")
    max_points: int = size(1000, doc="rows resampled at most (one stratified subsample, the same rows for both)")
    judge_bootstrap: int = size(1000, 500, doc="paired bootstrap replicates of the refusal-rate change")


@dataclass
class PairedChange:
    """One statistic on a and b, b - a, and its paired-bootstrap interval and p-value."""

    a: float | None = doc("on the audited checkpoint a")
    b: float | None = doc("on the --against checkpoint b")
    delta: float | None = doc("b - a")
    ci_low: float | None = doc("paired-bootstrap interval of the delta, low", type="number|null")
    ci_high: float | None = doc("high", type="number|null")
    p_value: float | None = doc("two-sided paired-bootstrap p-value of no change", type="number|null")
    n: int = doc("prompts resampled")


@dataclass
class LayerChange:
    layer: int = doc("block index")
    hook: str = doc("hook")
    a: float | None = doc("on the audited checkpoint a")
    b: float | None = doc("on the --against checkpoint b")
    delta: float | None = doc("b - a")
    ci_low: float | None = doc("paired-bootstrap interval of the delta, low", type="number|null")
    ci_high: float | None = doc("high", type="number|null")
    p_value: float | None = doc("two-sided paired-bootstrap p-value of no change", type="number|null")
    n: int = doc("prompts resampled")


@dataclass
class AqiChange:
    per_layer: list[LayerChange] = doc("one record per audited layer")
    delta: list[float | None] = doc("b - a per layer")
    max: float | None = doc("largest change over layers", type="number|null")
    min: float | None = doc("smallest (most negative) change over layers", type="number|null")
    max_abs: float | None = doc("largest |change|", type="number|null")
    n_significant: int = doc("layers whose change has p < 0.05")


@dataclass
class RefusalChange:
    harmful: PairedChange = doc("held-out harmful prompts")
    harmless: PairedChange = doc("held-out harmless prompts")


@dataclass
class DeltaResult:
    """metrics.json ``delta``."""

    n_bootstrap: int = doc("paired bootstrap replicates")
    ci_level: float = doc("interval level")
    resampling: str = doc("what a replicate resamples")
    p_value_rule: str = doc("how the p-value is computed from the replicates")
    aqi: AqiChange = doc("AQI per audited layer, harmful-harmless set")
    refusal: RefusalChange = doc("the judge's refusal rate, unsteered, on the steering section's held-out prompts")

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def paired_bootstrap(
    statistic: Callable[[np.ndarray], tuple[float, float]],
    labels: np.ndarray,
    *,
    n_bootstrap: int,
    level: float = 0.95,
    seed: int = 0,
) -> PairedChange:
    """``statistic(rows) -> (value on a, value on b)``, on all rows and on each paired replicate
    (:func:`geomprobe.core.stats.paired_bootstrap`, stratified by class); JSON-ready (None for non-finite)."""
    ch = stats.paired_bootstrap(statistic, stats.strata_from_labels(labels), n_bootstrap=n_bootstrap, level=level, seed=seed)
    return PairedChange(finite(ch.a), finite(ch.b), finite(ch.delta), finite(ch.low), finite(ch.high), finite(ch.p_value), ch.n)


def aqi_statistic(
    Xa: np.ndarray, Xb: np.ndarray, labels: np.ndarray, gamma: float = 0.5
) -> Callable[[np.ndarray], tuple[float, float]]:
    """AQI of rows ``rows`` (duplicates allowed) of both models' activations, from exact distances."""
    from geomprobe.aqi.resampling import exact_square_distances, replicate_indices

    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    Za, Zb = (np.asarray(X, dtype=np.float64) for X in (Xa, Xb))
    Za, Zb = Za - Za.mean(0), Zb - Zb.mean(0)
    Da, Db = exact_square_distances(Za), exact_square_distances(Zb)

    def statistic(rows: np.ndarray) -> tuple[float, float]:
        members = [rows[codes[rows] == c] for c in range(int(codes.max()) + 1)]
        return (replicate_indices(Za, Da, members, gamma)["aqi"], replicate_indices(Zb, Db, members, gamma)["aqi"])

    return statistic


def rate_statistic(flags_a: list[bool], flags_b: list[bool]) -> Callable[[np.ndarray], tuple[float, float]]:
    fa, fb = np.asarray(flags_a, dtype=np.float64), np.asarray(flags_b, dtype=np.float64)
    return lambda rows: (float(fa[rows].mean()), float(fb[rows].mean()))


def aqi_change(ctx: AuditContext) -> AqiChange:
    from geomprobe.activations.store import open_cache

    b = ctx.against
    assert b is not None
    sizes, seed = ctx.sizes.delta, ctx.options.seed
    per_layer = []
    with open_cache(ctx.caches["harmful_harmless"]) as ca, open_cache(b.caches["harmful_harmless"]) as cb:
        labels = np.asarray(ca.labels)
        rows = np.arange(len(labels))
        if len(rows) > sizes.max_points:  # Dunn needs all pairs: one stratified subsample, the same rows for both
            rng = np.random.default_rng(seed + 11)
            rows = np.sort(
                np.concatenate(
                    [
                        rng.choice(
                            np.flatnonzero(labels == c),
                            size=max(2, sizes.max_points * int((labels == c).sum()) // len(labels)),
                            replace=False,
                        )
                        for c in np.unique(labels)
                    ]
                )
            )
        for layer, hook in zip(ctx.layers, ctx.hooks):
            stat = aqi_statistic(ca.read(hook, "last")[rows], cb.read(hook, "last")[rows], labels[rows])
            ch = paired_bootstrap(stat, labels[rows], n_bootstrap=sizes.n_bootstrap, seed=seed + layer)
            per_layer.append(LayerChange(layer, hook, **as_metrics(ch)))
    deltas = [r.delta for r in per_layer]
    known = [d for d in deltas if d is not None]
    return AqiChange(
        per_layer,
        deltas,
        max(known) if known else None,
        min(known) if known else None,
        max(map(abs, known)) if known else None,
        sum(1 for r in per_layer if r.p_value is not None and r.p_value < 0.05),
    )


class DeltaSection(AuditSection):
    name = "delta"
    title = "Paired changes against the second checkpoint"
    description = "paired changes b - a with intervals (null without --against)"
    Sizes = DeltaSizes
    result_type = DeltaResult
    needs_against = True

    def run(self, ctx: AuditContext) -> DeltaResult:
        b = ctx.against
        assert b is not None, "the delta section runs only with a second checkpoint"
        sizes, seed, steer = ctx.sizes.delta, ctx.options.seed, ctx.results["steering"]
        aqi = ctx.clock.run(
            "delta", f"paired bootstrap of AQI over prompts ({sizes.n_bootstrap} replicates)", lambda: aqi_change(ctx)
        )
        # b's unsteered judge ran in the steering section on b, on the same held-out prompts
        unsteered_b = b.results["steering"].unsteered
        refusal = {}
        for name, prompts in (("harmful", steer.harmful), ("harmless", steer.harmless)):
            flags_a, flags_b = getattr(steer.judge.unsteered, name).flags, getattr(unsteered_b, name).flags
            refusal[name] = paired_bootstrap(
                rate_statistic(flags_a, flags_b), np.zeros(len(prompts)), n_bootstrap=sizes.judge_bootstrap, seed=seed
            )
        return DeltaResult(
            sizes.n_bootstrap,
            0.95,
            "prompt indices, stratified by class, the same rows for both models",
            P_RULE,
            aqi,
            RefusalChange(refusal["harmful"], refusal["harmless"]),
        )

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        d = metrics.get("delta")
        if not d:
            return []
        aqi, harmful = d["aqi"], d["refusal"]["harmful"]
        return [
            [
                "ΔAQI b − a (min / max over layers)",
                f"{fmt(aqi.get('min'))} / {fmt(aqi.get('max'))} ({aqi.get('n_significant')} layers at p < 0.05)",
            ],
            [
                "Δ refusal rate on harmful prompts b − a",
                f"{fmt(harmful.get('delta'))} [{fmt(harmful.get('ci_low'))}, "
                f"{fmt(harmful.get('ci_high'))}], p = {fmt(harmful.get('p_value'))}",
            ],
        ]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        d = metrics["delta"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"Paired bootstrap ({d['n_bootstrap']} replicates; a replicate resamples {d['resampling']}); "
            f"{float(d['ci_level']):.0%} percentile intervals of b − a; p-value = {d['p_value_rule']}."
        )
        rows = [
            [
                fmt(r["layer"]),
                fmt(r["a"]),
                fmt(r["b"]),
                fmt(r["delta"]),
                f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                fmt(r["p_value"]),
            ]
            for r in d["aqi"]["per_layer"]
        ]
        block.tables.append(Table("AQI per layer", ["layer", "a", "b", "Δ", "interval", "p"], rows))
        rows = [
            [
                name,
                fmt(r["a"]),
                fmt(r["b"]),
                fmt(r["delta"]),
                f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                fmt(r["p_value"]),
                fmt(r["n"]),
            ]
            for name, r in d["refusal"].items()
        ]
        block.tables.append(Table("Refusal rate (judge, unsteered)", ["prompts", "a", "b", "Δ", "interval", "p", "n"], rows))
        return block
