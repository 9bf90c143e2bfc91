"""Plots for safety-subspace overlap: overlap vs layer with the random baseline, and heatmaps.

Each function takes result dataclasses or their ``to_record()`` dicts and returns a Figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from geomprobe.core.errors import GeomprobeError
from geomprobe.plots._style import ACCENT_COLOR, BASELINE_COLOR, class_color, new_figure


def _get(r: Any, key: str) -> Any:
    return r[key] if isinstance(r, dict) else getattr(r, key)


def plot_activation_overlap(records: Sequence[Any], title: str | None = None) -> Figure:
    """Left: MSO and mean-difference capture vs layer, with analytic and empirical baselines.
    Right: principal cosines between the two class subspaces (rows: hooks)."""
    if not records:
        raise GeomprobeError("no overlap records to plot; check the hooks and labels")
    order = sorted(range(len(records)), key=lambda i: (_get(records[i], "layer"), _get(records[i], "hook")))
    recs = [records[i] for i in order]
    x = np.array([_get(r, "layer") for r in recs])
    fig, (ax, hm) = new_figure(1, 2, width=12.0, height=4.4)
    mso = np.array([_get(r, "mso") for r in recs], dtype=float)
    base = np.array([_get(r, "baseline") for r in recs], dtype=float)
    emp = np.array([_get(r, "baseline_empirical") for r in recs], dtype=float)
    p95 = np.array([_get(r, "baseline_empirical_p95") for r in recs], dtype=float)
    a, b = _get(recs[0], "label_a"), _get(recs[0], "label_b")
    ax.plot(x, mso, "o-", color=ACCENT_COLOR, label=f"MSO {a} vs {b}")
    ax.plot(x, base, "--", color=BASELINE_COLOR, label="random baseline max(k)/d")
    ax.fill_between(x, emp, p95, color=BASELINE_COLOR, alpha=0.25, label="random pairs: mean to 95th pct")
    ax.plot(x, [_get(r, "mean_diff_in_a") for r in recs], "s:", color=class_color(0), ms=4, label=f"mean diff. in {a} subspace")
    ax.plot(x, [_get(r, "mean_diff_in_b") for r in recs], "^:", color=class_color(1), ms=4, label=f"mean diff. in {b} subspace")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("overlap / fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="best")
    centred = "centred" if _get(recs[0], "centered") else "uncentred"
    short = _get(recs[0], "hook").split(".")[-1].removeprefix("hook_")
    size = f"k={_get(recs[0], 'k_requested')}" if _get(recs[0], "k_requested") else f"energy {_get(recs[0], 'energy_target')}"
    ax.set_title(
        f"{_get(recs[0], 'model_id') or 'activations'}\n{short}, pooling={_get(recs[0], 'pooling')}, {centred}, {size}",
        fontsize=9,
    )

    width = max(len(_get(r, "cosines")) for r in recs)
    grid = np.full((len(recs), max(width, 1)), np.nan)
    for i, r in enumerate(recs):
        c = np.asarray(_get(r, "cosines"), dtype=float)
        grid[i, : len(c)] = c
    im = hm.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    hm.set_yticks(range(len(recs)))
    hm.set_yticklabels([str(v) for v in x], fontsize=7 if len(recs) > 16 else 9)
    hm.xaxis.set_major_locator(MaxNLocator(integer=True))
    hm.set_xlabel("principal angle index (largest cosine first)")
    hm.set_ylabel("layer")
    hm.set_title(f"principal cosines, {a} vs {b} subspaces", fontsize=9)
    fig.colorbar(im, ax=hm, label="cos(principal angle)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_weight_overlap(records: Sequence[Any], title: str | None = None, value: str = "mso") -> Figure:
    """Left: per module type, ``value`` (mso or energy_b_in_a) vs layer with its random baseline.
    Right: heatmap of ``value`` over layer x module type."""
    ok = [r for r in records if _get(r, "status") == "ok" and _get(r, "layer") >= 0]
    if not ok:
        raise GeomprobeError(
            "no block matrix had two non-zero updates, so there is nothing to plot; check the checkpoints differ"
        )
    baseline_key = "baseline" if value == "mso" else "energy_baseline_b_in_a"
    modules: list[str] = []
    for r in ok:
        if _get(r, "module") not in modules:
            modules.append(_get(r, "module"))
    layers = sorted({_get(r, "layer") for r in ok})
    grid = np.full((len(modules), len(layers)), np.nan)
    fig, (ax, hm) = new_figure(1, 2, width=12.0, height=4.4)
    # Module types are not classes: a categorical map with room for every Llama/GPT-2 type.
    module_colors = matplotlib.colormaps["tab10" if len(modules) <= 10 else "viridis"]
    for j, module in enumerate(modules):
        rows = sorted((r for r in ok if _get(r, "module") == module), key=lambda r: _get(r, "layer"))
        xs = [_get(r, "layer") for r in rows]
        ys = [_get(r, value) for r in rows]
        color = module_colors(j / max(1, len(modules) - 1) if len(modules) > 10 else j)
        ax.plot(xs, ys, "o-", color=color, ms=3, label=module)
        ax.plot(xs, [_get(r, baseline_key) for r in rows], ":", color=color, alpha=0.6)
        for r in rows:
            grid[j, layers.index(_get(r, "layer"))] = _get(r, value)
    ax.plot([], [], ":", color=BASELINE_COLOR, label="random baseline (same colour)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("MSO" if value == "mso" else "energy of B in A's subspace")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="best", ncol=2)
    b = _get(ok[0], "b")
    size = f"k={_get(ok[0], 'k_requested')}" if _get(ok[0], "k_requested") else f"energy {_get(ok[0], 'energy_target')}"
    ax.set_title(f"{title or 'weights'}\nA = aligned-base vs B = {b}, left singular bases (output space), {size}", fontsize=9)
    im = hm.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    hm.set_yticks(range(len(modules)))
    hm.set_yticklabels(modules, fontsize=8)
    step = max(1, len(layers) // 15)
    hm.set_xticks(range(0, len(layers), step))
    hm.set_xticklabels([str(v) for v in layers[::step]], fontsize=8)
    hm.set_xlabel("layer")
    hm.set_ylabel("module")
    hm.set_title(f"{'MSO' if value == 'mso' else 'energy of B in A'} per matrix", fontsize=9)
    fig.colorbar(im, ax=hm, label=value)
    fig.tight_layout()
    return fig
