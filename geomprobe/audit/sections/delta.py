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
from functools import partial
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, as_metrics, finite
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.behaviour import judge
from geomprobe.audit.tables import ReportBlock, Table, fmt
from geomprobe.core import stats
from geomprobe.core.stats import bootstrap_p_value  # noqa: F401  (kept importable from here)

P_RULE = "min(1, 2 * (1 + min(#{delta* <= 0}, #{delta* >= 0})) / (1 + n_bootstrap))"


@dataclass
class PairedChange:
    """One statistic on a and b, b - a, and its paired-bootstrap interval and p-value."""

    a: float | None
    b: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int


@dataclass
class LayerChange:
    layer: int
    hook: str
    a: float | None
    b: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int


@dataclass
class AqiChange:
    per_layer: list[LayerChange]
    delta: list[float | None]
    max: float | None
    min: float | None
    max_abs: float | None
    n_significant: int  # layers with p < 0.05


@dataclass
class RefusalChange:
    harmful: PairedChange
    harmless: PairedChange


@dataclass
class DeltaResult:
    """metrics.json ``delta``."""

    n_bootstrap: int
    ci_level: float
    resampling: str
    p_value_rule: str
    aqi: AqiChange
    refusal: RefusalChange

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def paired_bootstrap(
    statistic: Callable[[np.ndarray], tuple[float, float]], labels: np.ndarray, *, n_bootstrap: int, level: float = 0.95,
    seed: int = 0,
) -> PairedChange:
    """``statistic(rows) -> (value on a, value on b)``, on all rows and on each paired replicate
    (:func:`geomprobe.core.stats.paired_bootstrap`, stratified by class); JSON-ready (None for non-finite)."""
    ch = stats.paired_bootstrap(statistic, stats.strata_from_labels(labels), n_bootstrap=n_bootstrap, level=level, seed=seed)
    return PairedChange(finite(ch.a), finite(ch.b), finite(ch.delta), finite(ch.low), finite(ch.high), finite(ch.p_value),
                        ch.n)


def aqi_statistic(Xa: np.ndarray, Xb: np.ndarray, labels: np.ndarray, gamma: float = 0.5) -> Callable[[np.ndarray], tuple[float, float]]:
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
    sizes, seed = ctx.sizes, ctx.options.seed
    per_layer = []
    with open_cache(ctx.caches["harmful_harmless"]) as ca, open_cache(b.caches["harmful_harmless"]) as cb:
        labels = np.asarray(ca.labels)
        rows = np.arange(len(labels))
        if len(rows) > sizes.max_points:  # Dunn needs all pairs: one stratified subsample, the same rows for both
            rng = np.random.default_rng(seed + 11)
            rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=max(2, sizes.max_points * int(
                (labels == c).sum()) // len(labels)), replace=False) for c in np.unique(labels)]))
        for layer, hook in zip(ctx.layers, ctx.hooks):
            stat = aqi_statistic(ca.read(hook, "last")[rows], cb.read(hook, "last")[rows], labels[rows])
            ch = paired_bootstrap(stat, labels[rows], n_bootstrap=sizes.n_bootstrap, seed=seed + layer)
            per_layer.append(LayerChange(layer, hook, **as_metrics(ch)))
    deltas = [r.delta for r in per_layer]
    known = [d for d in deltas if d is not None]
    return AqiChange(per_layer, deltas, max(known) if known else None, min(known) if known else None,
                     max(map(abs, known)) if known else None,
                     sum(1 for r in per_layer if r.p_value is not None and r.p_value < 0.05))


def _change_fields(prefix: str) -> tuple[tuple[str, str, str], ...]:
    return (
        (f"{prefix}.a", "number", "on the audited checkpoint a"),
        (f"{prefix}.b", "number", "on the --against checkpoint b"),
        (f"{prefix}.delta", "number", "b - a"),
        (f"{prefix}.ci_low", "number|null", "paired-bootstrap interval of the delta, low"),
        (f"{prefix}.ci_high", "number|null", "high"),
        (f"{prefix}.p_value", "number|null", "two-sided paired-bootstrap p-value of no change"),
        (f"{prefix}.n", "integer", "prompts resampled"),
    )


class DeltaSection(AuditSection):
    name = "delta"
    title = "Paired changes against the second checkpoint"
    needs_against = True
    fields = (
        ("delta", "object|null", "paired changes b - a with intervals (null without --against)"),
        ("delta.n_bootstrap", "integer", "paired bootstrap replicates"),
        ("delta.ci_level", "number", "interval level"),
        ("delta.resampling", "string", "what a replicate resamples"),
        ("delta.p_value_rule", "string", "how the p-value is computed from the replicates"),
        ("delta.aqi", "object", "AQI per audited layer, harmful-harmless set"),
        ("delta.aqi.per_layer", "list[object]", "one record per audited layer"),
        ("delta.aqi.per_layer[].layer", "integer", "block index"),
        ("delta.aqi.per_layer[].hook", "string", "hook"),
        *_change_fields("delta.aqi.per_layer[]"),
        ("delta.aqi.delta", "list[number]", "b - a per layer"),
        ("delta.aqi.max", "number|null", "largest change over layers"),
        ("delta.aqi.min", "number|null", "smallest (most negative) change over layers"),
        ("delta.aqi.max_abs", "number|null", "largest |change|"),
        ("delta.aqi.n_significant", "integer", "layers whose change has p < 0.05"),
        ("delta.refusal", "object", "the judge's refusal rate, unsteered, on the steering section's held-out prompts"),
        ("delta.refusal.harmful", "object", "held-out harmful prompts"),
        *_change_fields("delta.refusal.harmful"),
        ("delta.refusal.harmless", "object", "held-out harmless prompts"),
        *_change_fields("delta.refusal.harmless"),
    )

    def run(self, ctx: AuditContext) -> DeltaResult:
        b = ctx.against
        assert b is not None, "the delta section runs only with a second checkpoint"
        sizes, seed, steer = ctx.sizes, ctx.options.seed, ctx.results["steering"]
        aqi = ctx.clock.run("delta", f"paired bootstrap of AQI over prompts ({sizes.n_bootstrap} replicates)",
                            lambda: aqi_change(ctx))
        refusal = {}
        for name, prompts in (("harmful", steer.harmful), ("harmless", steer.harmless)):
            flags_a = getattr(steer.judge.unsteered, name).flags
            rate_b = ctx.clock.run("delta", f"judging the --against model on {len(prompts)} {name} prompts",
                                   partial(judge, b, prompts))
            refusal[name] = paired_bootstrap(rate_statistic(flags_a, rate_b.flags), np.zeros(len(prompts)),
                                             n_bootstrap=sizes.judge_bootstrap, seed=seed)
        return DeltaResult(sizes.n_bootstrap, 0.95, "prompt indices, stratified by class, the same rows for both models",
                           P_RULE, aqi, RefusalChange(refusal["harmful"], refusal["harmless"]))

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        d = metrics.get("delta")
        if not d:
            return []
        aqi, harmful = d["aqi"], d["refusal"]["harmful"]
        return [["ΔAQI b − a (min / max over layers)", f"{fmt(aqi.get('min'))} / {fmt(aqi.get('max'))} "
                 f"({aqi.get('n_significant')} layers at p < 0.05)"],
                ["Δ refusal rate on harmful prompts b − a", f"{fmt(harmful.get('delta'))} [{fmt(harmful.get('ci_low'))}, "
                 f"{fmt(harmful.get('ci_high'))}], p = {fmt(harmful.get('p_value'))}"]]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        d = metrics["delta"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"Paired bootstrap ({d['n_bootstrap']} replicates; a replicate resamples {d['resampling']}); "
            f"{float(d['ci_level']):.0%} percentile intervals of b − a; p-value = {d['p_value_rule']}.")
        rows = [[fmt(r["layer"]), fmt(r["a"]), fmt(r["b"]), fmt(r["delta"]), f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                 fmt(r["p_value"])] for r in d["aqi"]["per_layer"]]
        block.tables.append(Table("AQI per layer", ["layer", "a", "b", "Δ", "interval", "p"], rows))
        rows = [[name, fmt(r["a"]), fmt(r["b"]), fmt(r["delta"]), f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                 fmt(r["p_value"]), fmt(r["n"])] for name, r in d["refusal"].items()]
        block.tables.append(Table("Refusal rate (judge, unsteered)", ["prompts", "a", "b", "Δ", "interval", "p", "n"], rows))
        return block
