"""The contract every audit section follows (see ``docs/architecture.md``, "Adding an audit section").

A section is one stage of the audit. It declares where it writes in metrics.json (its schema
rows, from which :mod:`geomprobe.audit.schema` is assembled), the figures it draws, and how it
appears in the report; ``run(ctx)`` computes a result dataclass whose ``to_dict()`` is exactly
what metrics.json stores under :attr:`AuditSection.name`.
"""

from __future__ import annotations

from typing import Any

from geomprobe.audit.context import AuditContext
from geomprobe.audit.tables import FigureRef, ReportBlock

# One schema row: (dotted path, type, meaning). ``[]`` marks the items of a list; types are
# number (float, null when undefined/inf), integer, string, bool, object, list[...] of those, and
# ``|null`` when the value may be null.
FieldSpec = tuple[str, str, str]


class AuditSection:
    """One stage of the audit. Subclasses set the class attributes and override ``run``."""

    name: str = ""  # its key in metrics.json and ctx.results, and the id of its report block
    title: str = ""  # report heading
    writes_metrics: bool = True  # False: the section only prepares inputs (and settings) for others
    needs_against: bool = False  # runs only with a second checkpoint; metrics[name] is null without one
    settings_key: str | None = None  # its key under metrics["settings"], if it records settings
    settings_fields: tuple[FieldSpec, ...] = ()  # schema rows under settings.<settings_key>
    fields: tuple[FieldSpec, ...] = ()  # schema rows under <name>
    figure_keys: tuple[str, ...] = ()  # PNGs it writes (OUT/<key>.png), in the order drawn

    def run(self, ctx: AuditContext) -> Any:
        """Compute this section on ``ctx``'s checkpoint; return a result with ``to_dict()``."""
        raise NotImplementedError

    def settings(self, ctx: AuditContext) -> dict[str, Any] | None:
        """What decided this section's numbers, for ``metrics["settings"][settings_key]``."""
        return None

    def figures(self, ctx: AuditContext, result: Any, metrics: dict[str, Any]) -> list[FigureRef]:
        """Draw and save this section's plots (``ctx.save_figure``); called after metrics.json is written."""
        return []

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        """Rows (metric, value) this section adds to the report's headline table."""
        return []

    def report(self, metrics: dict[str, Any]) -> ReportBlock | None:
        """This section's report block, built from metrics.json alone (so a saved audit re-renders)."""
        return None
