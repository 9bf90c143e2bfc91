"""Alignment-depth plot: the per-position KL(B || A) profiles and the prefilling-attack curve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from geomprobe.plots._style import BASELINE_COLOR, class_color, new_figure

_LABELS = {"aligned_replies": "on B's own replies", "base_answers": "on A's answers"}


def _num(values: list[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def plot_depth(record: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Left: mean KL(B || A) per response position with its bootstrap band, one line per response kind.
    Right: the judge's refusal rate of B's continuation after k prefilled answer tokens, with intervals.

    ``record`` is an alignment-depth result as a dict (``DepthResult.to_dict()`` or metrics.json's ``depth``).
    """
    fig, axes = new_figure(1, 2, width=11.0, height=4.2, squeeze=False)
    ax_kl, ax_pre = axes[0]
    for i, key in enumerate(("aligned_replies", "base_answers")):
        prof = record[key]
        xs = list(range(1, len(prof["mean"]) + 1))
        color = class_color(1 - i)
        ax_kl.plot(
            xs,
            _num(prof["mean"]),
            marker="o",
            markersize=3,
            color=color,
            label=f"{_LABELS[key]} (half by token {prof['half_kl_tokens']})",
        )
        ax_kl.fill_between(xs, _num(prof["ci_low"]), _num(prof["ci_high"]), color=color, alpha=0.2, linewidth=0)
    ax_kl.set_xlabel("response position t")
    ax_kl.set_ylabel("KL(B || A) [nats], mean over prompts")
    ax_kl.legend(fontsize=7)
    points = record["prefill"]["points"]
    ks = [p["k"] for p in points]
    rates = [p["rate"] for p in points]
    err = [[p["rate"] - p["ci_low"] for p in points], [p["ci_high"] - p["rate"] for p in points]]
    auc = record["prefill"]["auc"]
    ax_pre.errorbar(
        ks,
        rates,
        yerr=err,
        marker="o",
        color=class_color(1),
        capsize=3,
        label="B after k tokens of A's answer" + ("" if auc is None else f" (AUC {auc:.2f})"),
    )
    ax_pre.axhline(
        record.get("aligned_refusal_rate", float("nan")), color=BASELINE_COLOR, linestyle="--", linewidth=1, label="B unprefilled"
    )
    ax_pre.set_ylim(-0.03, 1.03)
    ax_pre.set_xlabel("prefilled answer tokens k")
    ax_pre.set_ylabel("refusal rate of the continuation (judge)")
    ax_pre.legend(fontsize=7)
    fig.suptitle(title or f"alignment depth: {record.get('aligned_id', 'B')} against {record.get('base_id', 'A')}", fontsize=10)
    return fig
