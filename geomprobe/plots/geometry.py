"""AQI plots: layer-wise AQI with its bootstrap band, one panel per cluster index, and pooled layer weights."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, class_color, new_figure

_INDEX_PANELS = (
    ("davies_bouldin", "Davies-Bouldin (lower = better)", False),
    ("dunn", "Dunn (higher = better)", False),
    ("xie_beni", "Xie-Beni (lower = better)", True),
    ("calinski_harabasz", "Calinski-Harabasz (higher = better)", True),
)


def _records(results: Sequence[Any]) -> list[dict]:
    return [r.to_record() if hasattr(r, "to_record") else dict(r) for r in results]


def _value(record: Mapping, key: str) -> float:
    value = record.get(key)
    if value is None:  # JSON null: inf (see the "<name>_is" field) or undefined
        return math.inf if record.get(f"{key}_is") == "inf" else math.nan
    return float(value)


def _extra_value(record: Mapping, name: str) -> float:
    """A registered index's value (``record["extra"]``; JSON null is inf when ``extra_is`` says so)."""
    value = (record.get("extra") or {}).get(name)
    if value is None:
        return math.inf if (record.get("extra_is") or {}).get(name) == "inf" else math.nan
    return float(value)


def _interval(record: Mapping, name: str) -> tuple[float, float]:
    ci = (record.get("ci") or {}).get(name)
    if not ci:
        return math.nan, math.nan
    return tuple(math.nan if v is None else float(v) for v in ci)  # type: ignore[return-value]


def _x_axis(records: list[dict]) -> tuple[np.ndarray, str, list[str]]:
    layers = [r.get("layer", -1) for r in records]
    if all(isinstance(v, int) and v >= 0 for v in layers) and len(set(layers)) == len(layers):
        return np.array(layers, dtype=float), "layer", []
    return np.arange(len(records), dtype=float), "hook", [r.get("hook", str(i)) for i, r in enumerate(records)]


def plot_aqi_layers(
    results: Sequence[Any],
    *,
    model_id: str = "",
    pooled: Any = None,
    alpha: float = 0.05,
    index_titles: Mapping[str, str] | None = None,
    log_indices: Collection[str] = (),
) -> Figure:
    """AQI per layer with its bootstrap interval band, and one small panel per cluster index.

    ``results``: :class:`geomprobe.aqi.LayerAQI` objects or their records (as in the JSON).
    The panels are DBS, Dunn, XBI and CHI, then one per registered index in the records' ``extra``
    (titled by ``index_titles``, log axis for names in ``log_indices``, with its bootstrap band).
    Filled markers: permutation p-value < ``alpha``. Infinite index values are drawn as triangles
    on the panel's upper edge. ``pooled`` (a PooledAQI or its record) adds its held-out AQI.
    """
    records = _records(results)
    if not records:
        raise ValueError("no AQI results to plot")
    x, xlabel, ticklabels = _x_axis(records)
    titles = dict(index_titles or {})
    panels = [(key, label, log, False) for key, label, log in _INDEX_PANELS] + [
        (name, titles.get(name, name), name in log_indices, True) for name in (records[0].get("extra") or {})
    ]
    ncols = len(panels)
    fig, axes = new_figure(2, ncols, width=12.5 * ncols / 4, height=6.6, gridspec_kw={"height_ratios": [1.6, 1.0]})
    grid = axes[0, 0].get_gridspec()
    for ax in axes[0]:
        ax.remove()
    top = fig.add_subplot(grid[0, :])

    aqi = np.array([_value(r, "aqi") for r in records])
    lo = np.array([_value(r, "aqi_ci_low") for r in records])
    hi = np.array([_value(r, "aqi_ci_high") for r in records])
    level = records[0].get("ci_level", 0.95)
    if np.isfinite(lo).any():
        top.fill_between(
            x,
            lo,
            hi,
            color=class_color(1),
            alpha=0.18,
            linewidth=0,
            label=f"{level:.0%} bootstrap interval ({records[0].get('ci_method', 'percentile')})",
        )
    top.plot(x, aqi, color=class_color(1), linewidth=1.8, label="AQI")
    p = np.array([_value(r, "p_value") for r in records])
    significant = p < alpha
    top.scatter(x[significant], aqi[significant], color=class_color(1), zorder=3, s=28, label=f"permutation p < {alpha:g}")
    top.scatter(
        x[~significant],
        aqi[~significant],
        facecolor="white",
        edgecolor=class_color(1),
        zorder=3,
        s=28,
        label=f"p >= {alpha:g} or not tested",
    )
    if pooled is not None:
        pooled_rec = pooled.to_record() if hasattr(pooled, "to_record") else dict(pooled)
        top.axhline(
            pooled_rec["heldout_aqi"],
            color=ACCENT_COLOR,
            linestyle="--",
            linewidth=1.2,
            label=f"layer-pooled AQI, held-out ({pooled_rec['heldout_aqi']:.3f})",
        )
    top.set_ylim(0, 1)
    top.set_ylabel("AQI (0 = no separation, 1 = perfect)")
    top.set_xlabel(xlabel)
    first = records[0]
    hook_kind = str(first.get("hook", "")).split(".")[-1] if first.get("hook") else ""
    gamma = first.get("gamma", 0.5)
    where = ", ".join(v for v in (model_id, hook_kind, f"{first.get('pooling', '')} pooling") if v)
    classes = " vs ".join(first.get("n_per_class", {}).keys())
    top.set_title(f"AQI by layer: {where}\n{classes}; AQI = {gamma:g}/(1+DBS) + {1 - gamma:g}·DI/(1+DI)", fontsize=10)
    top.legend(fontsize=8, loc="best")
    top.grid(alpha=0.3)

    for ax, (key, label, log, registered) in zip(axes[1], panels):
        values = np.array([_extra_value(r, key) if registered else _value(r, key) for r in records])
        finite = np.isfinite(values)
        if registered:  # a registered index's bootstrap interval, drawn like AQI's
            band = np.array([_interval(r, key) for r in records])
            if np.isfinite(band).all(axis=1).any():
                ok = np.isfinite(band).all(axis=1)
                ax.fill_between(x[ok], band[ok, 0], band[ok, 1], color=BASELINE_COLOR, alpha=0.18, linewidth=0)
        ax.plot(x[finite], values[finite], color=BASELINE_COLOR, marker="o", markersize=3, linewidth=1.2)
        if (~finite & ~np.isnan(values)).any():
            ymax = values[finite].max() if finite.any() else 1.0
            inf_x = x[np.isinf(values)]
            ax.scatter(inf_x, np.full(len(inf_x), ymax), marker="^", color=ACCENT_COLOR, zorder=3, label="inf")
            ax.legend(fontsize=7)
        if log and finite.any() and (values[finite] > 0).all():
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ticklabels:
            ax.set_xticks(x, ticklabels, rotation=90, fontsize=6)
    axes[1][1].text(
        0.02,
        0.97,
        "set by single extreme pairs\n(outlier-driven)",
        transform=axes[1][1].transAxes,
        fontsize=7,
        va="top",
        color=BASELINE_COLOR,
    )
    if ticklabels:
        top.set_xticks(x, ticklabels, rotation=90, fontsize=6)
    fig.tight_layout()
    return fig


def plot_pooled_weights(pooled: Any, *, model_id: str = "") -> Figure:
    """Bar chart of the learned non-negative layer weights of the layer-pooled AQI."""
    rec = pooled.to_record() if hasattr(pooled, "to_record") else dict(pooled)
    layers = rec.get("layers") or list(range(len(rec["weights"])))
    fig, ax = new_figure(width=7.0, height=3.4)
    ax.bar(layers, rec["weights"], color=ACCENT_COLOR)
    ax.set_xlabel("layer")
    ax.set_ylabel("weight (sums to 1)")
    where = ", ".join(v for v in (model_id, f"{rec.get('pooling', '')} pooling") if v)
    ax.set_title(
        f"Layer-pooled AQI weights: {where}\nheld-out AQI {rec['heldout_aqi']:.3f} "
        f"(best single layer {rec['best_single_heldout_aqi']:.3f})",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
