"""The contract every audit section follows (see ``docs/architecture.md``, "Adding an audit section").

A section is one stage of the audit. It owns its sizes (``Sizes``: a frozen dataclass of
:func:`~geomprobe.audit.spec.size` fields), the settings it records (``settings_type``), its
result (``result_type``) and, where comparing two checkpoints means something, what ``compare``
returns (``comparison_type``). Its schema rows are generated from those dataclasses' field docs
(:mod:`geomprobe.audit.spec`), so nothing is declared twice. ``run(ctx)`` computes the result on
one checkpoint; with ``--against`` the orchestrator runs it on both and pairs the two results
through ``compare(a, b)`` (the ``comparison`` section collects them). A section that needs both
checkpoints at once sets ``needs_against`` and runs once, with ``ctx.against`` set.
"""

from __future__ import annotations

from typing import Any

from geomprobe.audit.context import AuditContext, as_metrics
from geomprobe.audit.spec import FieldSpec, type_rows
from geomprobe.audit.tables import FigureRef, ReportBlock

__all__ = ["AuditSection", "FieldSpec"]


class AuditSection:
    """One stage of the audit. Subclasses set the class attributes and override ``run``."""

    name: str = ""  # its key in metrics.json, ctx.results and the sizes, and the id of its report block
    title: str = ""  # report heading
    description: str = ""  # the schema's meaning of metrics[name]
    Sizes: type | None = None  # frozen dataclass of size() fields (default and --quick values)
    result_type: Any = None  # dataclass written under metrics[name]; None: the section writes nothing
    settings_key: str | None = None  # its key under metrics["settings"], if it records settings
    settings_type: Any = None  # what settings(ctx) returns (a dataclass, or dict[str, dataclass])
    settings_doc: str = ""  # the schema's meaning of settings[settings_key]
    settings_items: tuple[str, ...] = ()  # meaning of the values, when settings_type is a dict
    comparison_type: Any = None  # what compare(a, b) returns; None: no comparison
    comparison_doc: str = ""  # the schema's meaning of comparison[name]
    comparison_label: str = ""  # column name of a per-layer comparison in the report (default: name)
    needs_against: bool = False  # runs once, only with a second checkpoint; metrics[name] is null without one
    figure_keys: tuple[str, ...] = ()  # PNGs it writes (OUT/<key>.png), in the order drawn

    @property
    def writes_metrics(self) -> bool:
        return self.result_type is not None

    def run(self, ctx: AuditContext) -> Any:
        """Compute this section on ``ctx``'s checkpoint (``ctx.is_against`` for the second one)."""
        raise NotImplementedError

    def compare(self, a: Any, b: Any) -> Any:
        """Pair this checkpoint's result ``a`` with the ``--against`` checkpoint's ``b`` (a ``comparison_type``)."""
        return None

    def settings(self, ctx: AuditContext) -> Any:
        """What decided this section's numbers, for ``metrics["settings"][settings_key]`` (a ``settings_type``)."""
        return None

    def figures(self, ctx: AuditContext, result: Any, metrics: dict[str, Any]) -> list[FigureRef]:
        """Draw and save this section's plots (``ctx.save_figure``); called after metrics.json is written."""
        return []

    def summary_line(self, metrics: dict[str, Any]) -> str | None:
        """This section's headline in a few words, for ``AuditResult.summary`` (the CLI's output)."""
        return None

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        """Rows (metric, value) this section adds to the report's headline table."""
        return []

    def report(self, metrics: dict[str, Any]) -> ReportBlock | None:
        """This section's report block, built from metrics.json alone (so a saved audit re-renders)."""
        return None

    # -- the schema, generated from the dataclasses -----------------------------------------------
    def schema_fields(self) -> list[FieldSpec]:
        """Rows under ``metrics[name]``."""
        if self.result_type is None:
            return []
        kind = "object|null" if self.needs_against else "object"
        return type_rows(self.result_type, self.name, self.description, kind)

    def settings_fields(self) -> list[FieldSpec]:
        """Rows under ``metrics["settings"][settings_key]``."""
        if self.settings_key is None:
            return []
        return type_rows(self.settings_type, f"settings.{self.settings_key}", self.settings_doc, "object", self.settings_items)

    def comparison_fields(self, prefix: str = "comparison") -> list[FieldSpec]:
        """Rows under ``metrics["comparison"][name]`` (none without ``comparison_type``)."""
        if self.comparison_type is None:
            return []
        return type_rows(self.comparison_type, f"{prefix}.{self.name}", self.comparison_doc, "object")

    def settings_dict(self, ctx: AuditContext) -> Any:
        """``settings(ctx)`` as metrics.json stores it."""
        return as_metrics(self.settings(ctx))
