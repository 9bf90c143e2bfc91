"""The pieces a report is made of: blocks of paragraphs, tables and figures, and cell formatting.

Sections build :class:`ReportBlock` objects from metrics.json; :mod:`geomprobe.audit.report` turns
them into HTML and Markdown. Kept apart from the renderer so that sections and the renderer can
both use them without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FigureRef:
    """A plot saved as PNG, placed in one report section."""

    key: str
    section: str
    title: str
    path: Path
    caption: str = ""


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class ReportBlock:
    """One ``<section>`` of the report (one ``##`` heading in Markdown)."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant places, null as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 10**-(digits) or abs(value) >= 10**6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def model_line(prov: dict[str, Any] | None) -> str:
    """One checkpoint's provenance in a line: id, revision, dtype, depth and width."""
    if not prov:
        return "–"
    return (
        f"{prov.get('model_id', '')} ({prov.get('model_revision', '')}, {prov.get('model_dtype', '')}, "
        f"{prov.get('n_layers', '?')} layers, d_model {prov.get('d_model', '?')})"
    )


def where(stage: dict[str, Any]) -> str:
    """What a stage read: hook kind, pooling and computation dtype."""
    return f"hook {stage.get('hook_kind', '')}, pooling {stage.get('pooling', '')}, {stage.get('dtype', 'float64')}"
