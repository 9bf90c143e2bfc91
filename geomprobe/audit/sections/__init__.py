"""The audit's sections, in the order they run, appear in metrics.json and in the report.

A new section is one module here (an :class:`~geomprobe.audit.sections.base.AuditSection`
subclass) plus its test, and one line in :data:`SECTIONS`; the schema, the report and the
orchestrator pick it up from this list.
"""

from geomprobe.audit.sections.base import AuditSection, FieldSpec
from geomprobe.audit.sections.cache import CacheSection
from geomprobe.audit.sections.comparison import ComparisonSection
from geomprobe.audit.sections.delta import DeltaSection
from geomprobe.audit.sections.geometry import GeometrySection
from geomprobe.audit.sections.probes import ProbesSection
from geomprobe.audit.sections.steering import SteeringSection
from geomprobe.audit.sections.subspace import SubspaceSection

SECTIONS: tuple[AuditSection, ...] = (
    CacheSection(),  # first: every later section reads its cache files
    GeometrySection(),
    SubspaceSection(),
    ProbesSection(),
    SteeringSection(),  # chooses its layer by behaviour (judge on held-out prompts), not by AQI
    ComparisonSection(),  # reruns the stages on the --against checkpoint and reads all of the above
    DeltaSection(),  # paired bootstrap of the changes over the same prompts (needs steering's judged prompts)
)

__all__ = ["SECTIONS", "AuditSection", "FieldSpec"]
