"""Comparison section (``--against``): the second checkpoint b against the audited one a.

Runs the AQI, subspace and probe sections again on b, pairs the per-layer numbers (b - a), and
measures transfer: a's probes scored on b, the cosine of a's and b's harmful - harmless
directions, a's steering vector applied to b next to b's own, and the weight-space update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.audit.context import AuditContext, as_metrics
from geomprobe.audit.sections.base import AuditSection, FieldSpec
from geomprobe.audit.sections.geometry import GeometrySection
from geomprobe.audit.sections.probes import ProbesSection
from geomprobe.audit.sections.steering import build_vector, dose, summarize_dose
from geomprobe.audit.sections.subspace import SubspaceSection
from geomprobe.audit.sections.transfer import Transfer, TransferredSteering, direction_cosines, transfer_probes
from geomprobe.audit.sections.weight_update import WeightUpdate, weight_update
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, model_line

_PAIR = (
    ("layer", "integer", "block index"),
    ("hook", "string", "TransformerLens hook name"),
    ("a", "number", "value on the audited checkpoint (`--model`)"),
    ("b", "number", "value on the second checkpoint (`--against`)"),
    ("delta", "number", "b - a"),
)


def _pair_rows(path: str) -> list[FieldSpec]:
    return [(f"{path}.per_layer[].{k}", t, d) for k, t, d in _PAIR]


FIELDS: tuple[FieldSpec, ...] = (
    ("comparison", "object|null", "differences against the `--against` checkpoint, null without it"),
    ("comparison.aqi", "object", "AQI per layer on both checkpoints"),
    *_pair_rows("comparison.aqi"),
    ("comparison.aqi.per_layer", "list[object]", "one record per layer"),
    ("comparison.aqi.delta", "list[number]", "AQI(b) - AQI(a) per layer"),
    ("comparison.aqi.max_abs_delta", "number", "largest |delta|"),
    ("comparison.subspace", "object", "MSO per layer on both checkpoints"),
    ("comparison.subspace.per_layer", "list[object]", "one record per layer"),
    *_pair_rows("comparison.subspace"),
    ("comparison.subspace.delta", "list[number]", "MSO(b) - MSO(a) per layer"),
    ("comparison.subspace.max_abs_delta", "number", "largest |delta|"),
    ("comparison.probes", "object", "primary-method held-out AUROC, each checkpoint's own probes"),
    ("comparison.probes.per_layer", "list[object]", "one record per layer"),
    *_pair_rows("comparison.probes"),
    ("comparison.probes.delta", "list[number]", "AUROC(b) - AUROC(a) per layer"),
    ("comparison.probes.max_abs_delta", "number", "largest |delta|"),
    ("comparison.steering", "object", "refusal on both checkpoints at the steering hook"),
    ("comparison.steering.hook", "string", "hook"),
    ("comparison.steering.baseline_a", "number", "unsteered refusal log-odds on a"),
    ("comparison.steering.baseline_b", "number", "unsteered refusal log-odds on b"),
    ("comparison.steering.baseline_delta", "number", "b - a"),
    ("comparison.steering.refusal_b", "list[number]", "b's own direction on b: refusal per multiplier"),
    ("comparison.steering.kl_b", "list[number]", "its KL per multiplier"),
    ("comparison.transfer", "object", "do a's probes and directions still work on b?"),
    ("comparison.transfer.probes", "object", "a's probes scored on b's activations of a's held-out rows"),
    ("comparison.transfer.probes.per_layer", "list[object]", "one record per layer (primary method)"),
    ("comparison.transfer.probes.per_layer[].layer", "integer", "block index"),
    ("comparison.transfer.probes.per_layer[].hook", "string", "hook name"),
    ("comparison.transfer.probes.per_layer[].auroc_a", "number", "a's probe on a (held-out)"),
    ("comparison.transfer.probes.per_layer[].auroc", "number", "a's probe on b (same rows)"),
    ("comparison.transfer.probes.per_layer[].recall_at_fpr", "number", "on b, threshold from b's control scores"),
    ("comparison.transfer.probes.per_layer[].delta", "number", "auroc - auroc_a"),
    ("comparison.transfer.probes.auroc", "list[number]", "a's probes on b per layer"),
    ("comparison.transfer.probes.delta", "list[number]", "change against a per layer"),
    ("comparison.transfer.directions", "object", "harmful-harmless mean-difference directions of a and b"),
    ("comparison.transfer.directions.per_layer", "list[object]", "one record per layer"),
    ("comparison.transfer.directions.per_layer[].layer", "integer", "block index"),
    ("comparison.transfer.directions.per_layer[].hook", "string", "hook name"),
    ("comparison.transfer.directions.per_layer[].cosine", "number", "cosine between the two directions"),
    ("comparison.transfer.directions.cosine", "list[number]", "per layer"),
    ("comparison.transfer.steering", "object", "a's steering vector applied to b at the steering hook"),
    ("comparison.transfer.steering.hook", "string", "hook"),
    ("comparison.transfer.steering.baseline", "number", "b unsteered"),
    ("comparison.transfer.steering.multipliers", "list[number]", "multipliers"),
    ("comparison.transfer.steering.refusal", "list[number]", "refusal log-odds on b per multiplier"),
    ("comparison.transfer.steering.refusal_delta", "list[number]", "minus b's baseline"),
    ("comparison.transfer.steering.kl", "list[number]", "KL on b's harmless prompts per multiplier"),
    ("comparison.weights", "object", "weight-space update U = W_b - W_a, per 2-D matrix (embeddings skipped)"),
    ("comparison.weights.n_matrices", "integer", "matrices compared"),
    ("comparison.weights.n_changed", "integer", "matrices with U != 0"),
    ("comparison.weights.relative_update_norm", "number", "||U||_F / ||W_a||_F over all compared matrices"),
    ("comparison.weights.energy", "number", "energy fraction of the bases"),
    ("comparison.weights.per_layer", "list[object]", "one record per block"),
    ("comparison.weights.per_layer[].layer", "integer", "block index"),
    ("comparison.weights.per_layer[].n_changed", "integer", "changed matrices"),
    ("comparison.weights.per_layer[].relative_update_norm", "number", "||U|| / ||W_a|| over the block"),
    ("comparison.weights.per_layer[].mso_mean", "number", "mean MSO of U's and W_a's top left subspaces (changed matrices)"),
    ("comparison.weights.per_layer[].baseline_mean", "number", "mean random baseline of those"),
    ("comparison.weights.per_layer[].update_in_weight_subspace", "number", "share of ||U||^2 inside W_a's top subspace"),
    ("comparison.weights.per_layer[].update_along_direction", "number|null", "share of the residual-writing updates' ||U||^2 along a's harmful-harmless direction at this layer (baseline 1/d)"),
    ("comparison.weights.update_along_direction", "list[number]", "per audited layer"),
    ("comparison.weights.direction_baseline", "number", "1 / d_model"),
)


@dataclass
class PairedLayer:
    layer: int
    hook: str
    a: float | None
    b: float | None
    delta: float | None


@dataclass
class Paired:
    """One metric per layer on both checkpoints."""

    per_layer: list[PairedLayer]
    delta: list[float | None]
    max_abs_delta: float | None


@dataclass
class SteeringOnBoth:
    hook: str
    baseline_a: float | None
    baseline_b: float | None
    baseline_delta: float | None
    refusal_b: list[float | None]
    kl_b: list[float | None]


@dataclass
class ComparisonResult:
    """metrics.json ``comparison``."""

    aqi: Paired
    subspace: Paired
    probes: Paired
    steering: SteeringOnBoth
    transfer: Transfer
    weights: WeightUpdate

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def paired(a_recs: list[dict], b_recs: list[dict], key: str) -> Paired:
    """``key`` of matching per-layer records of a and b, with b - a."""
    per_layer = []
    for ra, rb in zip(a_recs, b_recs):
        va, vb = ra.get(key), rb.get(key)
        per_layer.append(PairedLayer(ra["layer"], ra["hook"], va, vb, None if va is None or vb is None else vb - va))
    deltas = [r.delta for r in per_layer]
    finite_deltas = [abs(d) for d in deltas if d is not None]
    return Paired(per_layer, deltas, max(finite_deltas) if finite_deltas else None)


class ComparisonSection(AuditSection):
    name = "comparison"
    title = "Comparison with the second checkpoint"
    needs_against = True
    fields = FIELDS
    figure_keys = ("comparison",)

    def run(self, ctx: AuditContext) -> ComparisonResult:
        b = ctx.against
        assert b is not None, "the comparison section runs only with a second checkpoint"
        sizes, clock = ctx.sizes, ctx.clock
        aqi_a, sub_a, probes_a, steer_a = (ctx.results[k] for k in ("aqi", "subspace", "probes", "steering"))
        aqi_b, sub_b, probes_b = GeometrySection().run(b), SubspaceSection().run(b), ProbesSection().run(b)
        primary = sizes.probe_methods[0]
        prim_a = [r for r in probes_a.to_dict()["per_layer"] if r["method"] == primary]
        prim_b = [r for r in probes_b.to_dict()["per_layer"] if r["method"] == primary]
        transferred = clock.run("transfer", "scoring the first model's probes on the second", lambda: transfer_probes(
            probes_a.trained[primary], b.caches["honesty"], b.caches["control"], ctx.hooks, sizes.probe_fpr))
        directions, dirs_a = direction_cosines(ctx)
        hook = steer_a.hook
        vector_b = build_vector(b.caches["harmful_harmless"], hook, steer_a.train_rows)
        a_on_b = summarize_dose(*clock.run("steering", f"the first model's vector on the second at {hook}",
                                           lambda: dose(b, steer_a.vector, hook, steer_a.harmful, steer_a.harmless)))
        b_own = summarize_dose(*clock.run("steering", "the second model's own vector",
                                          lambda: dose(b, vector_b, hook, steer_a.harmful, steer_a.harmless)))
        weights = clock.run("weights", "weight-space update overlap", lambda: weight_update(
            ctx.model, b.model, dirs_a, ctx.layers, energy=sizes.subspace_energy, device=ctx.options.device))
        return ComparisonResult(
            aqi=paired(aqi_a.to_dict()["per_layer"], aqi_b.to_dict()["per_layer"], "aqi"),
            subspace=paired(sub_a.to_dict()["per_layer"], sub_b.to_dict()["per_layer"], "mso"),
            probes=paired(prim_a, prim_b, "auroc"),
            steering=SteeringOnBoth(
                hook=hook, baseline_a=steer_a.baseline, baseline_b=b_own.baseline,
                baseline_delta=None if steer_a.baseline is None or b_own.baseline is None else b_own.baseline - steer_a.baseline,
                refusal_b=b_own.refusal, kl_b=b_own.kl),
            transfer=Transfer(transferred, directions, TransferredSteering(
                hook=hook, baseline=a_on_b.baseline, multipliers=a_on_b.multipliers, refusal=a_on_b.refusal,
                refusal_delta=a_on_b.refusal_delta, kl=a_on_b.kl)),
            weights=weights,
        )

    def figures(self, ctx: AuditContext, result: ComparisonResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.overview import plot_comparison

        return [ctx.save_figure("comparison", self.name, "Checkpoint a vs b", plot_comparison(metrics))]

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        comp = metrics.get("comparison")
        if not comp:
            return []
        cs = comp.get("steering") or {}
        return [["max |ΔAQI| against the second checkpoint", fmt((comp.get("aqi") or {}).get("max_abs_delta"))],
                ["refusal baseline: a → b", f"{fmt(cs.get('baseline_a'))} → {fmt(cs.get('baseline_b'))}"]]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        c = metrics["comparison"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(f"a = {model_line(metrics.get('model'))}; b = {model_line(metrics.get('against'))}.")
        block.tables.append(_per_layer_table(c))
        transfer = c.get("transfer") or {}
        ts, cs = transfer.get("steering") or {}, c.get("steering") or {}
        if ts:
            rows = [[fmt(x), fmt(r), fmt(k), fmt(rb), fmt(kb)] for x, r, k, rb, kb in zip(
                ts.get("multipliers", []), ts.get("refusal", []), ts.get("kl", []), cs.get("refusal_b", []), cs.get("kl_b", []))]
            rows.insert(0, ["0 (unsteered)", fmt(ts.get("baseline")), fmt(0.0), fmt(cs.get("baseline_b")), fmt(0.0)])
            block.tables.append(Table(
                f"Steering on b at {ts.get('hook', '')} (unsteered refusal on a: {fmt(cs.get('baseline_a'))})",
                ["multiplier", "a's vector: refusal", "a's vector: KL", "b's own vector: refusal", "b's own vector: KL"], rows,
            ))
        w = c.get("weights") or {}
        if w:
            rows = [[fmt(r.get("layer")), fmt(r.get("n_changed")), fmt(r.get("relative_update_norm")), fmt(r.get("mso_mean")),
                     fmt(r.get("baseline_mean")), fmt(r.get("update_in_weight_subspace")), fmt(r.get("update_along_direction"))]
                    for r in w.get("per_layer", [])]
            block.tables.append(Table(
                f"Weight update U = W_b − W_a ({fmt(w.get('n_changed'))} of {fmt(w.get('n_matrices'))} matrices changed, "
                f"||U||/||W_a|| = {fmt(w.get('relative_update_norm'))})",
                ["layer", "changed", "||U||/||W||", "MSO(U, W_a)", "baseline", "U in W_a subspace", "U along direction"], rows,
                note=f"'U along direction': share of the residual-writing updates' energy along a's harmful-harmless "
                     f"direction (random: {fmt(w.get('direction_baseline'))}).",
            ))
        return block


def _per_layer_table(c: dict[str, Any]) -> Table:
    keys = [("aqi", "AQI"), ("subspace", "MSO"), ("probes", "AUROC")]
    transfer = c.get("transfer") or {}
    t_probe = {r["layer"]: r for r in (transfer.get("probes") or {}).get("per_layer", [])}
    t_dir = {r["layer"]: r for r in (transfer.get("directions") or {}).get("per_layer", [])}
    rows = []
    for i, layer in enumerate(r["layer"] for r in (c.get("aqi") or {}).get("per_layer", [])):
        row = [fmt(layer)]
        for key, _ in keys:
            recs = (c.get(key) or {}).get("per_layer", [])
            rec = recs[i] if i < len(recs) else {}
            row += [f"{fmt(rec.get('a'))} → {fmt(rec.get('b'))}", fmt(rec.get("delta"))]
        row += [fmt((t_probe.get(layer) or {}).get("auroc")), fmt((t_dir.get(layer) or {}).get("cosine"))]
        rows.append(row)
    header = ["layer"]
    for _, name in keys:
        header += [f"{name} a → b", f"Δ{name}"]
    header += ["a's probe on b (AUROC)", "cos(direction a, b)"]
    return Table("Per-layer metrics, deltas and transfer", header, rows)
