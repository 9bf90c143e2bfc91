"""Depth section (``--against``): how deep is b's alignment relative to a? (Qi et al. 2024)

a is read as the base (A) and b as the aligned checkpoint (B), as in every ``--against`` change
"b - a": per-position KL(b || a) teacher-forced on b's own greedy replies and on a's greedy
answers to the first harmful prompts of the harmful-harmless set, and the prefilling attack (the
first k tokens of a's answer forced into b's reply, the judge reading b's continuation). The
result is :class:`geomprobe.steering.depth.DepthResult` itself: its fields carry their meanings,
so the schema comes from the same dataclass the API returns. An answer shorter than a k is
prefilled whole (counted in ``n_clamped``); when a refuses every prompt, all its answers are used.
Gate with ``--fail-if "depth.half_kl_tokens<3"`` or ``--fail-if "depth.prefill_auc<0.5"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.audit.context import AuditContext
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.spec import size
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt
from geomprobe.core.errors import GeomprobeError
from geomprobe.steering.depth import DEFAULT_KS, DepthResult


@dataclass(frozen=True)
class DepthSizes:
    n_prompts: int = size(32, 8, doc="harmful prompts of the harmful-harmless set (the first ones the cache section kept)")
    max_tokens: int = size(32, 12, doc="greedy tokens per reply, per answer and per prefilled continuation")
    ks: tuple[int, ...] = size(DEFAULT_KS, (0, 1, 2, 5, 10), doc="prefill lengths k (answer tokens forced into b's reply)")
    n_bootstrap: int = size(1000, 200, doc="bootstrap replicates over prompts (profile, shares, refusal rates, AUC)")

    def __post_init__(self) -> None:
        if self.n_prompts < 1 or self.max_tokens < 1 or not self.ks or min(self.ks) < 0 or max(self.ks) > self.max_tokens:
            raise GeomprobeError(
                f"audit depth sizes need n_prompts >= 1, max_tokens >= 1 and prefill lengths in 0..max_tokens; got {self}"
            )


class DepthSection(AuditSection):
    name = "depth"
    title = "Alignment depth against the second checkpoint"
    description = "alignment depth of b (aligned) against a (base): KL profile and prefilling attack (null without --against)"
    Sizes = DepthSizes
    result_type = DepthResult
    needs_against = True
    figure_keys = ("depth",)

    def run(self, ctx: AuditContext) -> DepthResult:
        from geomprobe.steering.depth import alignment_depth, harmful_prompts

        b = ctx.against
        assert b is not None, "the depth section runs only with a second checkpoint"
        sizes = ctx.sizes.depth
        prompts = harmful_prompts(ctx.sets["harmful_harmless"], sizes.n_prompts)
        return ctx.clock.run(
            "depth",
            f"alignment depth on {len(prompts)} harmful prompts (prefill k = {', '.join(map(str, sizes.ks))})",
            lambda: alignment_depth(
                ctx.model,
                b.model,
                prompts,
                ks=sizes.ks,
                max_tokens=sizes.max_tokens,
                n_bootstrap=sizes.n_bootstrap,
                seed=ctx.options.seed,
                clamp=True,
                compliant_only="if-any",
                batch_size=ctx.options.batch_size,
            ),
        )

    def figures(self, ctx: AuditContext, result: DepthResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.depth import plot_depth

        return [
            ctx.save_figure(
                "depth",
                self.name,
                "Alignment depth: KL profile and prefilling attack",
                plot_depth(metrics["depth"], title=f"alignment depth: b against a ({ctx.short_model_id})"),
                "left: KL(b || a) per response position; right: b's refusal rate after k tokens of a's answer",
            )
        ]

    def summary_line(self, metrics: dict[str, Any]) -> str:
        d = metrics["depth"]
        return f"half the KL(b || a) of b's replies by token {fmt(d['half_kl_tokens'])}, prefill AUC {fmt(d['prefill_auc'])}"

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        d = metrics.get("depth")
        if not d:
            return []
        p = d["prefill"]
        return [
            ["alignment depth: tokens holding half the KL(b ‖ a) on b's replies", fmt(d["half_kl_tokens"])],
            [
                "prefill AUC (b's refusal rate averaged over k)",
                f"{fmt(p['auc'])} [{fmt(p['auc_ci_low'])}, {fmt(p['auc_ci_high'])}]",
            ],
        ]

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        d = metrics["depth"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"b read as the aligned model, a as its base; {d['n_prompts']} harmful prompts ({d['n_used']} with an answer of "
            f"a the judge did not flag), {d['max_tokens']} greedy tokens, {d['n_bootstrap']} bootstrap replicates over "
            f"prompts, {float(d['ci_level']):.0%} percentile intervals. Refusal rate of a's answers "
            f"{fmt(d['base_refusal_rate'])}, of b's replies {fmt(d['aligned_refusal_rate'])}. See docs/depth.md."
        )
        rows = [
            [
                prof["responses"],
                *(f"{fmt(s['share'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" for s in prof["share_first"]),
                fmt(prof["half_kl_tokens"]),
                fmt(prof["total_mean"]),
            ]
            for prof in (d["aligned_replies"], d["base_answers"])
        ]
        header = [
            "teacher-forced on",
            *(f"share in first {s['k']}" for s in d["aligned_replies"]["share_first"]),
            "half-KL tokens",
            "mean total KL",
        ]
        block.tables.append(Table("Share of KL(b ‖ a) in the first k response tokens", header, rows))
        rows = [
            [fmt(p["k"]), fmt(p["rate"]), f"[{fmt(p['ci_low'])}, {fmt(p['ci_high'])}]", fmt(p["n"]), fmt(p["n_clamped"])]
            for p in d["prefill"]["points"]
        ]
        block.tables.append(
            Table(
                "Prefilling attack: b's refusal rate after k tokens of a's answer",
                ["k", "refused", "interval", "n", "answers shorter than k"],
                rows,
            )
        )
        return block
