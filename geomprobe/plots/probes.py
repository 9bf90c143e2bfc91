"""Probe plots: per-layer metrics, transfer matrices and token-level score HTML."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.figure import Figure

from geomprobe.core.io import atomic_write_text
from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, class_color, new_figure


def plot_probe_layers(records: Sequence[dict[str, Any]], *, model_id: str = "", title: str | None = None) -> Figure:
    """AUROC and recall at the chosen FPR against layer (one line per method when several)."""
    fig, axes = new_figure(1, 2, width=11, height=4)
    methods = sorted({r.get("method", "") for r in records})
    for k, method in enumerate(methods):
        rows = sorted((r for r in records if r.get("method", "") == method), key=lambda r: r["layer"])
        layers = [r["layer"] for r in rows]
        label = method or None
        axes[0].plot(
            layers, [np.nan if r["auroc"] is None else r["auroc"] for r in rows], "o-", color=class_color(k + 1), label=label
        )
        axes[1].plot(
            layers,
            [np.nan if r["recall_at_fpr"] is None else r["recall_at_fpr"] for r in rows],
            "o-",
            color=class_color(k + 1),
            label=label,
        )
    axes[0].axhline(0.5, color=BASELINE_COLOR, ls="--", lw=1, label="chance")
    axes[0].set_ylim(0.0, 1.02)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("AUROC")
    fpr = records[0].get("fpr", 0.01) if records else 0.01
    source = records[0].get("threshold_source", "control") if records else "control"
    axes[1].axhline(fpr, color=BASELINE_COLOR, ls="--", lw=1, label=f"FPR {fpr:g}")
    axes[1].set_ylim(0.0, 1.02)
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel(f"recall at {fpr:g} FPR ({source} threshold)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    pooling = records[0].get("pooling", "") if records else ""
    hook_kind = records[0]["hook"].split("hook_")[-1] if records else ""
    fig.suptitle(title or f"Probe metrics by layer: {model_id or 'model'}, {hook_kind}, pooling={pooling}")
    return fig


def plot_transfer_matrix(names: Sequence[str], auroc: np.ndarray, *, hook: str = "", title: str | None = None) -> Figure:
    """Heatmap of AUROC for (train cache, eval cache) at one hook; the diagonal is held-out."""
    n = len(names)
    fig, ax = new_figure(width=1.2 * n + 3, height=1.0 * n + 2)
    image = ax.imshow(auroc, vmin=0.5, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(n):
            value = auroc[i, j]
            ax.text(
                j,
                i,
                "nan" if not np.isfinite(value) else f"{value:.3f}",
                ha="center",
                va="center",
                color="white" if np.isfinite(value) and value < 0.8 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    fig.colorbar(image, ax=ax, label="AUROC")
    ax.set_title(title or f"Probe transfer AUROC at {hook}")
    return fig


def _color(score: float, limit: float) -> str:
    """Blue (negative) to white to red (positive), as an rgba CSS colour."""
    t = 0.0 if limit <= 0 else max(-1.0, min(1.0, score / limit))
    rgb = (214, 39, 40) if t > 0 else (31, 119, 180)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{abs(t) * 0.85:.3f})"


def token_scores_html(
    tokens: Sequence[Sequence[str]] | Sequence[str],
    scores: Sequence[np.ndarray] | np.ndarray,
    path: str | Path,
    *,
    response_start: Sequence[int] | int | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Probe token scores",
) -> Path:
    """Write a self-contained HTML page colouring each token by its probe score.

    ``tokens``/``scores`` are one sequence per prompt (or a single prompt). Tokens before
    ``response_start`` are shown faded: the response score averages only the rest. The colour
    scale is symmetric around 0 (the probe's decision boundary) and shared by all prompts.
    """
    prompts: list[Sequence[str]]
    if len(tokens) and isinstance(tokens[0], str):  # a single prompt
        prompts, per_prompt = [cast(Sequence[str], tokens)], [np.asarray(scores)]
        if not isinstance(response_start, Sequence):
            response_start = [response_start or 0]
    else:
        prompts, per_prompt = list(tokens), list(scores)
    starts = list(response_start) if isinstance(response_start, Sequence) else [response_start or 0] * len(prompts)
    finite = [np.asarray(s, dtype=float) for s in per_prompt]
    limit = max((float(np.max(np.abs(s))) for s in finite if len(s)), default=1.0)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}",
        ".tok{font-family:monospace;white-space:pre-wrap;padding:1px 0;border-radius:2px}",
        ".prompt{opacity:.45}.row{border-bottom:1px solid #ddd;padding:.8em 0;line-height:1.9}",
        ".meta{color:#555;font-size:.85em}</style></head><body>",
        f"<h2>{html.escape(title)}</h2>",
        f"<p class='meta'>Red: score &gt; 0 (leans positive), blue: &lt; 0; full colour at |score| = {limit:.3g}. "
        "Faded tokens precede the response and are not averaged. Hover a token for its score.</p>",
    ]
    for k, (toks, s) in enumerate(zip(prompts, finite)):
        start = int(starts[k]) if k < len(starts) else 0
        resp = s[start:]
        mean = float(resp.mean()) if len(resp) else float("nan")
        label = f" label={html.escape(str(labels[k]))}" if labels is not None and k < len(labels) else ""
        parts.append(f"<div class='row'><div class='meta'>prompt {k}{label} response mean score {mean:.3f}</div>")
        for i, (tok, value) in enumerate(zip(toks, s)):
            cls = "tok prompt" if i < start else "tok"
            parts.append(
                f"<span class='{cls}' style='background:{_color(float(value), limit)}' "
                f"title='{float(value):.4f}'>{html.escape(str(tok))}</span>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return atomic_write_text(path, "".join(parts))


def plot_score_distributions(
    scores: np.ndarray,
    y: np.ndarray,
    *,
    control: np.ndarray | None = None,
    threshold: float | None = None,
    hook: str = "",
    labels: Sequence[str] = ("negative", "positive"),
) -> Figure:
    """Histogram of probe scores by class (and control), with the recall threshold."""
    fig, ax = new_figure()
    y = np.asarray(y).astype(bool)
    bins = np.histogram_bin_edges(np.concatenate([scores] + ([control] if control is not None else [])), bins=40)
    ax.hist(scores[~y], bins=bins, alpha=0.6, color=class_color(0), label=labels[0])
    ax.hist(scores[y], bins=bins, alpha=0.6, color=class_color(1), label=labels[1])
    if control is not None:
        ax.hist(control, bins=bins, histtype="step", color=BASELINE_COLOR, lw=1.5, label="control")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color=ACCENT_COLOR, ls="--", label="threshold")
    ax.set_xlabel("probe score")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(f"Probe scores at {hook}")
    return fig
