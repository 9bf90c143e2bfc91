"""CHES plot: preference pairs ranked by their score, the ranking's agreement through depth, and a vs b."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, class_color, new_figure

_LABELS = {"ches": "CHES", "ln_ches": "LN-CHES"}


def _num(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def plot_ches(record: Mapping[str, Any], compared: Mapping[str, Any] | None = None, *, title: str | None = None) -> Figure:
    """Left: each pair's ranking score, highest first, one colour per kind, flagged pairs filled.
    Middle: per audited block output, the Spearman correlation of its scores with the ranking layer's
    and the share of flagged pairs both flag. Right (with ``compared``): each pair's score on b against a.

    ``record`` is metrics.json's ``ches``; ``compared`` its ``comparison.ches``.
    """
    by, layer = record["rank_by"], record["layer"]
    fig, axes = new_figure(1, 3 if compared else 2, width=16.0 if compared else 11.0, height=4.2, squeeze=False)
    ax_rank, ax_depth = axes[0][0], axes[0][1]
    pairs = sorted(record["pairs"], key=lambda p: p["rank"])
    kinds = list(dict.fromkeys(p["kind"] for p in record["pairs"]))
    for k, kind in enumerate(kinds):
        for flagged in (True, False):
            chosen = [p for p in pairs if p["kind"] == kind and p["flagged"] == flagged]
            if not chosen:
                continue
            color = class_color(k + 1)
            ax_rank.scatter(
                [p["rank"] for p in chosen],
                _num([p[by] for p in chosen]),
                s=18,
                color=color if flagged else "none",
                edgecolors=color,
                label=f"{kind} ({'flagged' if flagged else 'not flagged'})",
            )
    ax_rank.axvline(record["n_flagged"] + 0.5, color=BASELINE_COLOR, linestyle="--", linewidth=1, label="top share")
    ax_rank.set_xlabel(f"rank by {_LABELS[by]} (1 = highest)")
    ax_rank.set_ylabel(f"{_LABELS[by]} at {layer}")
    ax_rank.legend(fontsize=7)
    rows = record["per_layer"]
    layers = [r["layer"] for r in rows]
    ax_depth.plot(layers, _num([r["spearman"] for r in rows]), "o-", color=class_color(1), label="Spearman with " + layer)
    ax_depth.plot(layers, _num([r["flagged_agreement"] for r in rows]), "s--", color=ACCENT_COLOR, label="flagged at both")
    ax_depth.axhline(0, color=BASELINE_COLOR, linewidth=1)
    ax_depth.set_ylim(-1.03, 1.03)
    if len(layers) <= 16:
        ax_depth.set_xticks(layers)
    ax_depth.set_xlabel("layer (block output, resid_post)")
    ax_depth.set_ylabel(f"agreement with {layer} ({_LABELS[by]})")
    ax_depth.legend(fontsize=7)
    if compared:
        ax_ab = axes[0][2]
        a = _num([p[by] for p in record["pairs"]])
        b = a + _num(compared[by]["per_pair_delta"])
        ax_ab.scatter(a, b, s=14, color=class_color(1))
        finite = np.isfinite(a) & np.isfinite(b)
        if finite.any():
            low, high = float(min(a[finite].min(), b[finite].min())), float(max(a[finite].max(), b[finite].max()))
            ax_ab.plot([low, high], [low, high], color=BASELINE_COLOR, linestyle="--", linewidth=1, label="b = a")
        rho = compared[by]["spearman"]
        ax_ab.set_title("Spearman " + ("undefined" if rho is None else f"{rho:.3f}"), fontsize=9)
        ax_ab.set_xlabel(f"{_LABELS[by]} on a")
        ax_ab.set_ylabel(f"{_LABELS[by]} on b")
        ax_ab.legend(fontsize=7)
    fig.suptitle(title or f"CHES of {record['n_pairs']} preference pairs ({record['dataset']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the title; the long axis labels do not overlap
    return fig
