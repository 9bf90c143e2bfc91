"""The steering section's part of the report: summary rows and the block of tables, read from metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geomprobe.audit.tables import ReportBlock, Table, fmt


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The steering rows of the report's summary table (empty when the section did not run)."""
    steer = metrics.get("steering") or {}
    if not steer:
        return []
    jd = steer.get("judge") or {}
    rows = [
        ["steering layer", f"{steer.get('hook', '')} (chosen by {steer.get('selection', '')})"],
        ["refusal log-odds, unsteered", fmt(steer.get("baseline"))],
    ]
    for setting, label in (("unsteered", "refusal rate, unsteered"), ("ablated", "refusal rate, direction ablated")):
        rec = jd.get(setting) or {}
        if rec:
            rows.append(
                [
                    f"{label} (harmful / harmless, {fmt(jd.get('max_new_tokens'))} tokens)",
                    f"{rate_text(rec.get('harmful'))} / {rate_text(rec.get('harmless'))}",
                ]
            )
    ab = steer.get("ablation") or {}
    if ab:
        rows.append(["with the direction ablated", f"{fmt(ab.get('refusal'))} (KL {fmt(ab.get('kl'))})"])
    sb = steer.get("best")
    rows.append(
        [
            f"strongest refusal within the KL limit (max over {len(steer.get('multipliers') or [])} multipliers)",
            f"{fmt(sb.get('refusal'))} at multiplier {fmt(sb.get('multiplier'))} (KL {fmt(sb.get('kl'))})"
            if sb
            else "none: every multiplier exceeds the KL limit",
        ]
    )
    return rows


def report_block(name: str, title: str, metrics: dict[str, Any]) -> ReportBlock:
    """The steering block of the report: dose-response, the judge's rates, and the layer choice."""
    st = metrics["steering"]
    block = ReportBlock(name, title)
    block.paragraphs.append(
        f"{st.get('vector_method', '')} direction (harmful − harmless, pooling {st.get('pooling', '')}) added at "
        f"{st.get('hook', '')}, chosen by {st.get('selected_by', '')}; vector norm {fmt(st.get('vector_norm'))}. "
        f"Metric: refusal log-odds on {fmt(st.get('n_prompts'))} held-out harmful prompts; side effect: "
        f"KL(unsteered ‖ steered) on {fmt(st.get('n_harmless'))} harmless prompts, nats."
    )
    rows = [
        [fmt(x), fmt(r), fmt(d), fmt(k)]
        for x, r, d, k in zip(st.get("multipliers", []), st.get("refusal", []), st.get("refusal_delta", []), st.get("kl", []))
    ]
    rows.insert(0, ["0 (unsteered)", fmt(st.get("baseline")), fmt(0.0), fmt(0.0)])
    ab = st.get("ablation") or {}
    if ab:
        rows.append(["ablated", fmt(ab.get("refusal")), fmt(ab.get("refusal_delta")), fmt(ab.get("kl"))])
    block.tables.append(Table("Dose-response", ["multiplier", "refusal log-odds", "Δ", "KL"], rows))
    jd = st.get("judge") or {}
    if jd:
        judged = [
            ("unsteered", "unsteered", st.get("baseline")),
            ("ablated", "direction ablated", (st.get("ablation") or {}).get("refusal")),
        ]
        if jd.get("best"):
            judged.append(
                ("best", f"multiplier {fmt((st.get('best') or {}).get('multiplier'))}", (st.get("best") or {}).get("refusal"))
            )
        rows = [
            [label, fmt(logodds), rate_text(jd[key].get("harmful")), rate_text(jd[key].get("harmless"))]
            for key, label, logodds in judged
            if jd.get(key)
        ]
        block.tables.append(
            Table(
                f"Behaviour: the judge's refusal rate beside the next-token log-odds at {st.get('hook', '')}",
                ["setting", "refusal log-odds (harmful)", "refusal rate, harmful", "refusal rate, harmless"],
                rows,
                note=f"Greedy generations of {fmt(jd.get('max_new_tokens'))} tokens, refusal-phrase matcher "
                f"{jd.get('matcher_version', '')}; {float(jd.get('ci_level') or 0.95):.0%} bootstrap intervals over prompts.",
            )
        )
    cands = st.get("candidates") or []
    if cands:
        rows = [
            [
                fmt(c.get("layer")),
                fmt(c.get("refusal_delta")),
                fmt(c.get("kl")),
                "yes" if c.get("within_kl") else "no",
                fmt(c.get("harmful_rate")) if c.get("judged") else "not judged",
            ]
            for c in cands
        ]
        block.tables.append(
            Table(
                f"Layer choice ({st.get('selection', '')}): each candidate's direction ablated",
                ["layer", "Δ refusal log-odds", "KL (harmless)", "within KL limit", "refusal rate, harmful"],
                rows,
                note=str(st.get("selected_by", "")),
            )
        )
    return block


def rate_text(rec: Mapping[str, Any] | None) -> str:
    """A judged rate as "25% (4/16; 6%-50%)"."""
    if not rec:
        return "n/a"
    return f"{rec['rate']:.0%} ({rec['n_refused']}/{rec['n']}; {rec['ci_low']:.0%}-{rec['ci_high']:.0%})"
