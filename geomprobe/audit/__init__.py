"""Checkpoint audits: every stage per layer in one run, a report, and gates for pipelines.

>>> from geomprobe.audit import run_audit
>>> result = run_audit("default", out_dir="audit", quick=True, fail_if=["aqi.max<0.3"], progress=True)
>>> result.metrics["aqi"]["max"], result.html_path, result.failed

The audit is a registry of sections (:data:`SECTIONS`: cache, AQI, subspace, probes, steering,
CHES, comparison, delta, depth), each one module under ``geomprobe/audit/sections/``; :func:`register_section`
adds one. Each section owns its sizes (``AuditSizes()["aqi"]``, or ``.aqi``). See ``docs/audit.md``
for the metrics.json schema and the ``--fail-if`` syntax.
"""

from geomprobe.audit.conditions import ConditionResult, FailCondition, evaluate_conditions, parse_condition, parse_conditions
from geomprobe.audit.context import FULL, QUICK, AuditContext, AuditOptions, AuditSizes, audited_layers
from geomprobe.audit.pipeline import AuditResult, load_metrics, run_audit
from geomprobe.audit.schema import FIELDS, SCHEMA_NAME, SCHEMA_VERSION, schema_markdown, validate_metrics
from geomprobe.audit.sections import SECTIONS, AuditSection, register_section, unregister_section
from geomprobe.audit.sections.behaviour import candidate_layers

__all__ = [
    "AuditContext",
    "AuditOptions",
    "AuditResult",
    "AuditSection",
    "AuditSizes",
    "ConditionResult",
    "FIELDS",
    "FULL",
    "FailCondition",
    "QUICK",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "SECTIONS",
    "audited_layers",
    "candidate_layers",
    "evaluate_conditions",
    "load_metrics",
    "parse_condition",
    "parse_conditions",
    "run_audit",
    "register_section",
    "schema_markdown",
    "unregister_section",
    "validate_metrics",
]
