"""Shared look: the same two class colours everywhere, labelled axes, titles naming the data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from geomprobe.core.errors import GeomprobeError  # noqa: E402
from geomprobe.core.io import PLOT_SUFFIXES, atomic_file  # noqa: E402

# Index 0 = first class in the file's label_names (safe/harmless/honest), 1 = second (unsafe/...).
CLASS_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
BASELINE_COLOR = "#7f7f7f"
ACCENT_COLOR = "#ff7f0e"


def class_color(index: int) -> str:
    return CLASS_COLORS[index % len(CLASS_COLORS)]


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 4.0, **kwargs):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)
    return fig, axes


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save atomically as PNG (or the format the suffix names) and close the figure."""
    path = Path(path)
    if path.suffix and path.suffix.lower() not in PLOT_SUFFIXES:
        plt.close(fig)
        raise GeomprobeError(f"plot {str(path)!r} has extension {path.suffix!r}; use one of {', '.join(PLOT_SUFFIXES)}")
    try:
        # The temporary name hides the suffix, so the format is passed explicitly.
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:].lower() or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
