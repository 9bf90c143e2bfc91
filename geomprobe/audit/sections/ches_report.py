"""The CHES section's words: its CLI headline, its summary rows and its report block, from metrics.json alone."""

from __future__ import annotations

from typing import Any

from geomprobe.audit.tables import ReportBlock, Table, fmt

_LABELS = {"ches": "CHES", "ln_ches": "LN-CHES"}
_STATS = ("mean", "std", "min", "q25", "median", "q75", "max")


def summary_line(metrics: dict[str, Any]) -> str:
    c = metrics["ches"]
    by = c["rank_by"]
    line = (
        f"CHES of {c['n_pairs']} preference pairs at {c['layer']}: median {_LABELS[by]} {fmt(c[by]['median'])}, "
        f"{c['n_flagged']} flagged (top {c['top_share']:g} by {by})"
    )
    compared = (metrics.get("comparison") or {}).get("ches")
    return line + (f" (rank agreement with b: Spearman {fmt(compared[by]['spearman'])})" if compared else "")


def summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    c = metrics.get("ches")
    if not c:
        return []
    by = c["rank_by"]
    kinds = ", ".join(f"{kind}: {k['n_flagged']} of {k['n']}" for kind, k in c["by_kind"].items())
    rows = [
        [
            f"CHES of {c['n_pairs']} preference pairs ({c['dataset']}, {c['layer']} layer): median LN-CHES / CHES",
            f"{fmt(c['ln_ches']['median'])} / {fmt(c['ches']['median'])}",
        ],
        [
            f"pairs flagged for likelihood displacement (top {c['top_share']:g} by {by})",
            f"{c['n_flagged']} of {c['n_pairs']}" + (f" ({kinds})" if kinds else ""),
        ],
    ]
    compared = (metrics.get("comparison") or {}).get("ches")
    if compared:
        s = compared[by]
        rows.append(
            [
                f"mean {_LABELS[by]} change b − a over the same pairs; rank agreement",
                f"{fmt(s['delta'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}], p = {fmt(s['p_value'])}; "
                f"Spearman {fmt(s['spearman'])}",
            ]
        )
    return rows


def report_block(key: str, title: str, metrics: dict[str, Any]) -> ReportBlock:
    c = metrics["ches"]
    by = c["rank_by"]
    block = ReportBlock(key, title)
    block.paragraphs.append(
        f"{c['n_pairs']} pairs of the preference set {c['dataset']} (sha256 {c['dataset_sha256'][:16]}…), scored on the "
        f"audited checkpoint's forward pass ({c['model_dtype']}) at the {c['layer']} layer ({c['hook']}); pooling: "
        f"{c['pooling']}; inner products in {c['dtype']}; chat template "
        f"{'applied' if c['chat_template_applied'] else 'not applied'}. Ranked by {by}; the top {c['top_share']:g} "
        f"({c['n_flagged']} pairs) are flagged. CHES = ⟨Σh⁺, Σh⁻⟩ − ‖Σh⁺‖² (Razin et al. 2025, Definition 2); LN-CHES "
        "divides each sum by its number of terms. High scores mark the pairs the paper predicts to lower the chosen "
        "response's likelihood under DPO; that prediction is not validated in geomprobe yet (see docs/ches.md, Limits)."
    )
    block.tables.append(
        Table(
            "Distribution over the pairs",
            ["score", *_STATS],
            [[_LABELS[name], *(fmt(c[name][s]) for s in _STATS)] for name in ("ches", "ln_ches")],
        )
    )
    if c["by_kind"]:
        block.tables.append(
            Table(
                "By kind of pair",
                ["kind", "pairs", "flagged", "median CHES", "median LN-CHES"],
                [
                    [kind, fmt(k["n"]), fmt(k["n_flagged"]), fmt(k["median_ches"]), fmt(k["median_ln_ches"])]
                    for kind, k in c["by_kind"].items()
                ],
            )
        )
    pairs = {p["index"]: p for p in c["pairs"]}
    block.tables.append(
        Table(
            f"Highest-ranked pairs by {by}",
            ["rank", "index", "kind", "CHES", "LN-CHES", "chosen terms", "rejected terms", "flagged"],
            [
                [
                    fmt(p["rank"]),
                    fmt(p["index"]),
                    p["kind"],
                    fmt(p["ches"]),
                    fmt(p["ln_ches"]),
                    fmt(p["n_chosen_terms"]),
                    fmt(p["n_rejected_terms"]),
                    fmt(p["flagged"]),
                ]
                for p in (pairs[i] for i in c["top_pairs"])
            ],
            note="index: the pair's row in the preference file (0-based).",
        )
    )
    block.tables.append(
        Table(
            f"The same pairs at each audited block output (resid_post, before the final norm), against {c['layer']}",
            ["layer", "median CHES", "median LN-CHES", f"Spearman with {c['layer']} ({by})", "flagged at both"],
            [
                [
                    fmt(r["layer"]),
                    fmt(r["median_ches"]),
                    fmt(r["median_ln_ches"]),
                    fmt(r["spearman"]),
                    fmt(r["flagged_agreement"]),
                ]
                for r in c["per_layer"]
            ],
        )
    )
    compared = (metrics.get("comparison") or {}).get("ches")
    if compared:
        block.tables.append(
            Table(
                f"Against the second checkpoint: the same {compared['n_pairs']} pairs at {compared['layer']}",
                ["score", "mean on a", "mean on b", "Δ b − a", "interval", "p", "Spearman (a, b)"],
                [
                    [
                        _LABELS[name],
                        fmt(s["a"]),
                        fmt(s["b"]),
                        fmt(s["delta"]),
                        f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]",
                        fmt(s["p_value"]),
                        fmt(s["spearman"]),
                    ]
                    for name, s in ((n, compared[n]) for n in ("ches", "ln_ches"))
                ],
                note=f"Paired bootstrap over pairs ({compared['n_bootstrap']} replicates, "
                f"{float(compared['ci_level']):.0%} percentile interval). {fmt(compared['flagged_overlap'])} of a's flagged "
                "pairs are flagged on b too. Raw CHES scales with the hidden states' norm, so its change mixes in any change "
                "of that norm; the rank agreement does not.",
            )
        )
    return block
