"""Plots shared across stages: 2-D PCA projections of both classes per layer, token-level probe
heatmaps, and the two-checkpoint comparison panels of ``geomprobe audit --against``.

Class colours come from :func:`class_color` (index 0 = the safe/honest class, 1 = the other);
the two checkpoints are drawn in :data:`MODEL_COLORS`, never in class colours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from geomprobe.core.errors import GeomprobeError
from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, CLASS_COLORS, class_color, new_figure

MODEL_COLORS = (ACCENT_COLOR, CLASS_COLORS[3])  # checkpoint a, checkpoint b


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``X`` (n, d) on its top two principal components (float64, centred).

    Returns ``(Z, explained)`` with ``Z`` (n, 2) and the variance fraction of each component.
    Signs are fixed so each component's largest-magnitude loading is positive (stable plots).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise GeomprobeError(f"PCA needs an (n >= 2, d) matrix; got shape {X.shape}")
    if not np.isfinite(X).all():
        raise GeomprobeError("PCA input has NaN or inf values; recreate the cache")
    Xc = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    k = min(2, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    signs[signs == 0] = 1.0
    comps = comps * signs[:, None]
    Z = Xc @ comps.T
    if k < 2:
        Z = np.column_stack([Z, np.zeros(len(Z))])
    total = float((s**2).sum())
    explained = (s[:2] ** 2 / total) if total > 0 else np.zeros(2)
    explained = np.pad(explained, (0, 2 - len(explained)))
    return Z, explained


def plot_pca_grid(
    activations: Mapping[int, np.ndarray],
    y: Sequence[int],
    *,
    class_names: Sequence[str] = ("negative", "positive"),
    model_id: str = "",
    hook_kind: str = "resid_post",
    pooling: str = "last",
    highlight: int | None = None,
    ncols: int = 4,
) -> Figure:
    """Both classes on the top two principal components of each layer, one panel per layer.

    ``activations``: ``{layer: (n, d)}`` rows aligned with ``y`` (0/1). PCA is fitted on both
    classes together per layer; axis labels give each component's share of the variance.
    ``highlight`` outlines one layer's panel (e.g. the layer of the highest AQI).
    """
    if not activations:
        raise GeomprobeError("no layers to project; pass {layer: activations}")
    y_arr = np.asarray(y)
    layers = sorted(activations)
    n = len(layers)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(nrows, ncols, width=3.1 * ncols, height=2.9 * nrows + 0.6, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, layers):
        X = np.asarray(activations[layer])
        if len(X) != len(y):
            raise GeomprobeError(f"layer {layer}: {len(X)} rows but {len(y)} labels")
        Z, explained = pca_2d(X)
        for cls in (0, 1):
            rows = y_arr == cls
            name = class_names[cls] if cls < len(class_names) else str(cls)
            ax.scatter(
                Z[rows, 0],
                Z[rows, 1],
                s=9,
                alpha=0.7,
                color=class_color(cls),
                label=f"{name} ({int(rows.sum())})",
                edgecolors="none",
            )
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"layer {layer}" + (" (max AQI)" if layer == highlight else ""), fontsize=9)
        if layer == highlight:
            for spine in ax.spines.values():
                spine.set_edgecolor(ACCENT_COLOR)
                spine.set_linewidth(2)
    axes.flat[0].legend(fontsize=7, loc="best")
    where = ", ".join(v for v in (model_id, hook_kind, f"{pooling} pooling") if v)
    fig.suptitle(f"2-D PCA projection per layer: {where}\n{class_names[0]} vs {class_names[1]}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_token_scores(
    tokens: Sequence[Sequence[str]],
    scores: Sequence[np.ndarray],
    *,
    response_start: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    model_id: str = "",
    hook: str = "",
    pooling: str = "",
    max_tokens: int = 64,
) -> Figure:
    """Token-level probe heatmap: one strip per prompt, each token coloured by its probe score.

    The colour scale is symmetric around 0 (the probe's decision boundary): red leans to the
    positive class, blue to the negative (the class colours). Long prompts keep their last
    ``max_tokens`` tokens; a dashed line marks where the scored response begins.
    """
    if not tokens or len(tokens) != len(scores):
        raise GeomprobeError("token heatmap needs one score array per prompt")
    starts = list(response_start) if response_start is not None else [0] * len(tokens)
    finite = [np.asarray(s, dtype=np.float64) for s in scores]
    # Scale on the scored (response) tokens so template tokens do not wash out the colours.
    parts = [s[starts[k] :] if k < len(starts) and len(s[starts[k] :]) else s for k, s in enumerate(finite)]
    limit = max((float(np.nanmax(np.abs(p))) for p in parts if len(p)), default=1.0) or 1.0
    height = 1.55 * len(tokens) + 1.3
    fig, axes = new_figure(len(tokens), 1, width=13.0, height=height, squeeze=False)
    fig.subplots_adjust(top=1 - 0.85 / height, bottom=0.55 / height, hspace=1.25, left=0.08, right=0.9)
    image = None
    for k, (ax, toks, s) in enumerate(zip(axes[:, 0], tokens, finite)):
        offset = max(0, len(toks) - max_tokens)
        shown_toks, shown = list(toks)[offset:], s[offset:]
        image = ax.imshow(np.clip(shown, -limit, limit)[None, :], aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(shown_toks)))
        ax.set_xticklabels([t.replace("\n", "\\n") for t in shown_toks], rotation=90, fontsize=6, family="monospace")
        ax.set_yticks([])
        start = starts[k] - offset if k < len(starts) else 0
        if 0 < start < len(shown_toks):
            ax.axvline(start - 0.5, color="black", linestyle="--", linewidth=1)
        resp = s[starts[k] :] if k < len(starts) else s
        mean = float(resp.mean()) if len(resp) else float("nan")
        label = labels[k] if labels is not None and k < len(labels) else ""
        ax.set_ylabel(
            label,
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
            color=class_color(1) if label in ("dishonest", "harmful", "deceptive") else class_color(0),
        )
        ax.set_title(
            f"prompt {k}: response mean score {mean:+.2f}" + (f" (first {offset} tokens cut)" if offset else ""),
            fontsize=8,
            loc="left",
        )
    if image is not None:
        cax = fig.add_axes((0.915, 0.55 / height, 0.012, 1 - 1.4 / height))
        fig.colorbar(image, cax=cax, label="probe score (0 = boundary; clipped)")
    where = ", ".join(v for v in (model_id, hook, f"probe pooling {pooling}" if pooling else "") if v)
    fig.suptitle(
        f"Token-level probe scores: {where}\nred = leans dishonest, blue = leans honest; dashed line: response starts",
        fontsize=10,
    )
    return fig


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    layers = np.array([r.get("layer", i) for i, r in enumerate(records)], dtype=float)
    values = np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)
    return layers, values


def plot_comparison(metrics: Mapping[str, Any]) -> Figure:
    """Two checkpoints side by side, from an audit's metrics: AQI, subspace overlap and probe AUROC
    per layer (with a's probes scored on b), direction cosines, steering transfer and the weight update."""
    comp = metrics.get("comparison")
    if not comp:
        raise GeomprobeError("these metrics have no comparison; run the audit with --against")
    a_id = (metrics.get("model") or {}).get("model_id", "a")
    b_id = (metrics.get("against") or {}).get("model_id", "b")
    short = lambda s: s if len(s) <= 32 else "…" + s[-31:]  # noqa: E731
    fig, axes = new_figure(2, 3, width=15.0, height=8.0)
    panels = [
        ("aqi", "AQI", (0, 1)),
        ("subspace", "MSO harmful vs harmless", (0, 1)),
        ("probes", "held-out probe AUROC", (0, 1.02)),
    ]
    for ax, (key, label, ylim) in zip(axes[0], panels):
        recs = (comp.get(key) or {}).get("per_layer", [])
        x, a = _series(recs, "a")
        _, b = _series(recs, "b")
        ax.plot(x, a, "o-", color=MODEL_COLORS[0], ms=3, label=f"a: {short(a_id)}")
        ax.plot(x, b, "s--", color=MODEL_COLORS[1], ms=3, label=f"b: {short(b_id)}")
        if key == "probes":
            t = (comp.get("transfer") or {}).get("probes", {}).get("per_layer", [])
            tx, tv = _series(t, "auroc")
            ax.plot(tx, tv, "^:", color=BASELINE_COLOR, ms=4, label="a's probes on b")
            ax.axhline(0.5, color=BASELINE_COLOR, lw=0.8, ls="--")
        ax.set_ylim(*ylim)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{label} per layer", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    # direction cosines
    ax = axes[1][0]
    recs = ((comp.get("transfer") or {}).get("directions") or {}).get("per_layer", [])
    x, cos = _series(recs, "cosine")
    ax.plot(x, cos, "o-", color=MODEL_COLORS[1], ms=3)
    ax.axhline(0, color=BASELINE_COLOR, lw=0.8, ls="--")
    ax.set_ylim(-1.02, 1.02)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cosine")
    ax.set_title("harmful−harmless direction: cos(a, b)", fontsize=9)
    ax.grid(alpha=0.3)
    # steering transfer
    ax = axes[1][1]
    st = metrics.get("steering") or {}
    ts = (comp.get("transfer") or {}).get("steering") or {}
    cs = comp.get("steering") or {}
    if st and ts:
        ax.plot(
            [0] + list(st["multipliers"]),
            [st["baseline"]] + list(st["refusal"]),
            "o-",
            color=MODEL_COLORS[0],
            ms=3,
            label="a's vector on a",
        )
        ax.plot(
            [0] + list(ts["multipliers"]),
            [ts["baseline"]] + list(ts["refusal"]),
            "^:",
            color=BASELINE_COLOR,
            ms=4,
            label="a's vector on b",
        )
        if cs.get("refusal_b"):
            ax.plot(
                [0] + list(ts["multipliers"]),
                [cs["baseline_b"]] + list(cs["refusal_b"]),
                "s--",
                color=MODEL_COLORS[1],
                ms=3,
                label="b's vector on b",
            )
        ax.legend(fontsize=7)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("refusal log-odds (harmful prompts)")
    ax.set_title(f"steering at {ts.get('hook', st.get('hook', ''))}", fontsize=9)
    ax.grid(alpha=0.3)
    # weight update
    ax = axes[1][2]
    w = comp.get("weights") or {}
    recs = w.get("per_layer", [])
    if recs:
        x, rel = _series(recs, "relative_update_norm")
        ax.bar(x, rel, color=MODEL_COLORS[1], alpha=0.6, label="||U|| / ||W_a||")
        ax.set_ylabel("relative update norm")
        ax2 = ax.twinx()
        x2, along = _series(recs, "update_along_direction")
        ax2.plot(x2, along, "o-", color=class_color(1), ms=3, label="U along a's direction")
        ax2.axhline(w.get("direction_baseline") or 0, color=BASELINE_COLOR, ls="--", lw=0.8, label="random 1/d")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("share of residual-writing ||U||²", fontsize=8)
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper left")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("weight update U = W_b − W_a", fontsize=9)
    pooling = (metrics.get("aqi") or {}).get("pooling", "")
    hook_kind = (metrics.get("settings") or {}).get("hook_kind", "")
    fig.suptitle(
        f"Checkpoint comparison: a = {short(a_id)}, b = {short(b_id)} ({hook_kind}; AQI/MSO pooling {pooling}, "
        f"probes pooling {(metrics.get('probes') or {}).get('pooling', '')})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
