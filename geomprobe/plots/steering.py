"""Steering plots: dose-response per layer, and the geometric layer screen."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, class_color, new_figure


def dose_response(result, *, title: str | None = None) -> Figure:
    """Metric vs multiplier, one line per hook; KL on harmless prompts in a second panel if measured."""
    records = [r for r in result.records if r.multiplier is not None]
    has_kl = any(r.kl_mean is not None for r in records)
    fig, axes = new_figure(1, 2 if has_kl else 1, width=11.0 if has_kl else 6.4, height=4.2, squeeze=False)
    ax_metric = axes[0][0]
    hooks = list(dict.fromkeys(r.hook for r in records))
    for i, hook in enumerate(hooks):
        rows = sorted((r for r in records if r.hook == hook), key=lambda r: r.multiplier)
        xs = [r.multiplier for r in rows]
        label = f"layer {rows[0].layer}" if len(hooks) > 1 else hook
        ax_metric.plot(xs, [r.score_mean for r in rows], marker="o", color=class_color(i), label=label)
        if has_kl:
            axes[0][1].plot(xs, [r.kl_mean for r in rows], marker="o", color=class_color(i), label=label)
    ax_metric.axhline(result.baseline, color=BASELINE_COLOR, linestyle="--", linewidth=1, label="unsteered")
    ax_metric.set_xlabel("multiplier")
    ax_metric.set_ylabel("refusal log-odds" if result.metric in ("refusal", "refusal-log-odds") else result.metric)
    ax_metric.legend(fontsize=7, ncol=2)
    if has_kl:
        ax_kl = axes[0][1]
        ax_kl.set_xlabel("multiplier")
        ax_kl.set_ylabel("KL(base || steered) on harmless prompts [nats]")
        ax_kl.set_yscale("symlog", linthresh=1e-3)
        ax_kl.axhline(0.1, color=ACCENT_COLOR, linestyle=":", linewidth=1, label="KL 0.1")
        ax_kl.legend(fontsize=7)
    hook_kind = hooks[0].split(".hook_")[-1] if hooks else ""
    fig.suptitle(
        title or f"{result.model_id}: steering dose-response ({result.method} vector, {hook_kind}, pooling {result.pooling})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def layer_screen(records: Sequence, *, title: str | None = None) -> Figure:
    """Per-layer geometric screen: JS divergence (bits) and mean pair-difference cosine."""
    fig, ax = new_figure()
    layers = [r.layer for r in records]
    ax.plot(layers, [r.js_bits for r in records], marker="o", color=class_color(1), label="JS divergence [bits]")
    if any(r.mean_cosine is not None for r in records):
        ax.plot(
            layers, [r.mean_cosine for r in records], marker="s", color=class_color(0), label="mean cos(pair diff, mean diff)"
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("separation")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    kind = records[0].hook.split(".hook_")[-1] if records else ""
    ax.set_title(title or f"class separation per layer ({kind}, pooling {records[0].pooling if records else ''})", fontsize=10)
    fig.tight_layout()
    return fig
