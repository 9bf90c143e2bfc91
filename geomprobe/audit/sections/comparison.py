"""Comparison section (``--against``): the second checkpoint b against the audited one a.

A loop over the registry: every section with a ``compare`` has already run on both checkpoints
(the orchestrator runs each section on a, then on b), and its ``compare(a_result, b_result)``
goes under ``comparison.<name>`` (per-layer AQI, MSO and probe AUROC with b - a, and the
steering dose-response of b's own direction). Then what only makes sense for a pair: transfer
(a's probes scored on b, the cosine of a's and b's harmful - harmless directions, a's steering
vector applied to b) and the weight-space update (``transfer.py``, ``weight_update.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.audit.context import AuditContext
from geomprobe.audit.registry import SECTIONS
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.steering import dose, summarize_dose
from geomprobe.audit.sections.transfer import Transfer, TransferredSteering, direction_cosines, transfer_probes
from geomprobe.audit.sections.weight_update import WeightUpdate, weight_update
from geomprobe.audit.spec import FieldSpec, doc, size, type_rows
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, model_line


@dataclass(frozen=True)
class ComparisonSizes:
    weight_energy: float = size(0.9, doc="energy fraction of the weight-matrix bases of the update overlap")


@dataclass
class PairOnly:
    """What only a pair of checkpoints has: ``comparison.transfer`` and ``comparison.weights``."""

    transfer: Transfer = doc("do a's probes and directions still work on b?")
    weights: WeightUpdate = doc("weight-space update U = W_b - W_a, per 2-D matrix (embeddings skipped)")


def compared(ctx: AuditContext) -> dict[str, Any]:
    """Each registered section's ``compare`` of its results on a and b, by section name."""
    b = ctx.against
    assert b is not None
    return {
        s.name: s.compare(ctx.results[s.name], b.results[s.name])
        for s in SECTIONS
        if s.comparison_type is not None and s.name in ctx.results and s.name in b.results
    }


def pair_only(ctx: AuditContext) -> PairOnly:
    """Transfer of a's probes, directions and steering vector to b, and the weight update."""
    b = ctx.against
    assert b is not None
    clock, probes_a, steer_a = ctx.clock, ctx.results["probes"], ctx.results["steering"]
    transferred = clock.run(
        "transfer",
        "scoring the first model's probes on the second",
        lambda: transfer_probes(
            probes_a.trained[probes_a.primary_method], b.caches["honesty"], b.caches["control"], ctx.hooks, probes_a.fpr
        ),
    )
    directions, dirs_a = direction_cosines(ctx)
    hook = steer_a.hook
    a_on_b = summarize_dose(
        *clock.run(
            "steering",
            f"the first model's vector on the second at {hook}",
            lambda: dose(b, steer_a.vector, hook, steer_a.harmful, steer_a.harmless),
        )
    )
    weights = clock.run(
        "weights",
        "weight-space update overlap",
        lambda: weight_update(
            ctx.model, b.model, dirs_a, ctx.layers, energy=ctx.sizes.comparison.weight_energy, device=ctx.options.device
        ),
    )
    return PairOnly(
        Transfer(
            transferred,
            directions,
            TransferredSteering(
                hook=hook,
                baseline=a_on_b.baseline,
                multipliers=a_on_b.multipliers,
                refusal=a_on_b.refusal,
                refusal_delta=a_on_b.refusal_delta,
                kl=a_on_b.kl,
            ),
        ),
        weights,
    )


class ComparisonSection(AuditSection):
    name = "comparison"
    title = "Comparison with the second checkpoint"
    description = "differences against the `--against` checkpoint, null without it"
    Sizes = ComparisonSizes
    result_type = dict  # {section name: its compare(a, b), "transfer": ..., "weights": ...}
    needs_against = True
    figure_keys = ("comparison",)

    def schema_fields(self) -> list[FieldSpec]:
        rows = [(self.name, "object|null", self.description)]
        for section in SECTIONS:
            rows += section.comparison_fields(self.name)
        # PairOnly's fields sit directly under comparison, beside the sections' comparisons
        return rows + type_rows(PairOnly, self.name, "")[1:]

    def run(self, ctx: AuditContext) -> dict[str, Any]:
        pair = pair_only(ctx)
        return {**compared(ctx), "transfer": pair.transfer, "weights": pair.weights}

    def figures(self, ctx: AuditContext, result: dict[str, Any], metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.overview import plot_comparison

        return [ctx.save_figure("comparison", self.name, "Checkpoint a vs b", plot_comparison(metrics))]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        comp = metrics.get("comparison")
        if not comp:
            return []
        cs = comp.get("steering") or {}
        n = len((comp.get("aqi") or {}).get("per_layer") or [])
        return [
            [f"max |ΔAQI| over {n} layers against the second checkpoint", fmt((comp.get("aqi") or {}).get("max_abs_delta"))],
            ["refusal baseline: a → b", f"{fmt(cs.get('baseline_a'))} → {fmt(cs.get('baseline_b'))}"],
        ]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        c = metrics["comparison"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(f"a = {model_line(metrics.get('model'))}; b = {model_line(metrics.get('against'))}.")
        block.tables.append(_per_layer_table(c))
        transfer = c.get("transfer") or {}
        ts, cs = transfer.get("steering") or {}, c.get("steering") or {}
        if ts:
            rows = [
                [fmt(x), fmt(r), fmt(k), fmt(rb), fmt(kb)]
                for x, r, k, rb, kb in zip(
                    ts.get("multipliers", []),
                    ts.get("refusal", []),
                    ts.get("kl", []),
                    cs.get("refusal_b", []),
                    cs.get("kl_b", []),
                )
            ]
            rows.insert(0, ["0 (unsteered)", fmt(ts.get("baseline")), fmt(0.0), fmt(cs.get("baseline_b")), fmt(0.0)])
            block.tables.append(
                Table(
                    f"Steering on b at {ts.get('hook', '')} (unsteered refusal on a: {fmt(cs.get('baseline_a'))})",
                    ["multiplier", "a's vector: refusal", "a's vector: KL", "b's own vector: refusal", "b's own vector: KL"],
                    rows,
                )
            )
        w = c.get("weights") or {}
        if w:
            rows = [
                [
                    fmt(r.get("layer")),
                    fmt(r.get("n_changed")),
                    fmt(r.get("relative_update_norm")),
                    fmt(r.get("mso_mean")),
                    fmt(r.get("baseline_mean")),
                    fmt(r.get("update_in_weight_subspace")),
                    fmt(r.get("update_along_direction")),
                ]
                for r in w.get("per_layer", [])
            ]
            block.tables.append(
                Table(
                    f"Weight update U = W_b − W_a ({fmt(w.get('n_changed'))} of {fmt(w.get('n_matrices'))} matrices changed, "
                    f"||U||/||W_a|| = {fmt(w.get('relative_update_norm'))})",
                    ["layer", "changed", "||U||/||W||", "MSO(U, W_a)", "baseline", "U in W_a subspace", "U along direction"],
                    rows,
                    note=f"'U along direction': share of the residual-writing updates' energy along a's harmful-harmless "
                    f"direction (random: {fmt(w.get('direction_baseline'))}).",
                )
            )
        return block


def _per_layer_table(c: dict[str, Any]) -> Table:
    """Every section's per-layer comparison (a -> b and the delta), then a's probe and direction on b."""
    labels = [
        (s.name, s.comparison_label or s.name)
        for s in SECTIONS
        if isinstance(c.get(s.name), dict)
        and "per_layer" in c[s.name]
        and all("a" in r and "b" in r for r in c[s.name]["per_layer"])
    ]
    by_layer = {key: {r["layer"]: r for r in c[key]["per_layer"]} for key, _ in labels}
    transfer = c.get("transfer") or {}
    t_probe = {r["layer"]: r for r in (transfer.get("probes") or {}).get("per_layer", [])}
    t_dir = {r["layer"]: r for r in (transfer.get("directions") or {}).get("per_layer", [])}
    rows = []
    for layer in sorted({layer for recs in by_layer.values() for layer in recs}):
        row = [fmt(layer)]
        for key, _ in labels:
            rec = by_layer[key].get(layer) or {}
            row += [f"{fmt(rec.get('a'))} → {fmt(rec.get('b'))}", fmt(rec.get("delta"))]
        row += [fmt((t_probe.get(layer) or {}).get("auroc")), fmt((t_dir.get(layer) or {}).get("cosine"))]
        rows.append(row)
    header = ["layer"]
    for _, name in labels:
        header += [f"{name} a → b", f"Δ{name}"]
    header += ["a's probe on b (AUROC)", "cos(direction a, b)"]
    return Table("Per-layer metrics, deltas and transfer", header, rows)
