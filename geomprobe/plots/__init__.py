"""Plotting for every stage: one style, functions grouped by stage in submodules.

All functions take results (dataclasses or records) and return a matplotlib ``Figure``;
``save_figure`` writes it. The Agg backend is used so plots work without a display.
"""

from geomprobe.plots._style import CLASS_COLORS, class_color, new_figure, save_figure

__all__ = ["CLASS_COLORS", "class_color", "new_figure", "save_figure"]
