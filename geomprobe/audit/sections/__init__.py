"""The audit's built-in sections, registered in the order they run, appear in metrics.json and in the report.

A new section is one module (an :class:`~geomprobe.audit.sections.base.AuditSection` subclass)
and one call to :func:`~geomprobe.audit.registry.register_section`; the schema, the report and
the orchestrator pick it up from the registry (:data:`SECTIONS`).
"""

from geomprobe.audit.registry import SECTIONS, register_section, unregister_section
from geomprobe.audit.sections.base import AuditSection, FieldSpec
from geomprobe.audit.sections.cache import CacheSection
from geomprobe.audit.sections.ches import ChesSection
from geomprobe.audit.sections.comparison import ComparisonSection
from geomprobe.audit.sections.delta import DeltaSection
from geomprobe.audit.sections.depth import DepthSection
from geomprobe.audit.sections.geometry import GeometrySection
from geomprobe.audit.sections.probes import ProbesSection
from geomprobe.audit.sections.steering import SteeringSection
from geomprobe.audit.sections.subspace import SubspaceSection

if not SECTIONS:  # once per process, however often this package is reloaded
    for _section in (
        CacheSection(),  # first: every later section reads its cache files (its sizes pick the prompts and layers)
        GeometrySection(),
        SubspaceSection(),
        ProbesSection(),
        SteeringSection(),  # chooses its layer by behaviour (judge on held-out prompts), not by AQI
        ChesSection(),  # preference pairs scored by the model's own forward pass (no cache)
        ComparisonSection(),  # --against: each section's compare(a, b), plus transfer and the weight update
        DeltaSection(),  # --against: paired bootstrap of the changes over the same prompts (needs steering's prompts)
        DepthSection(),  # --against: alignment depth of b against a (KL profile, prefilling attack)
    ):
        register_section(_section)

__all__ = ["SECTIONS", "AuditSection", "FieldSpec", "register_section", "unregister_section"]
