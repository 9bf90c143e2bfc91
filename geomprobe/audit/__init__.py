"""Checkpoint audits: every stage per layer in one run, a report, and gates for pipelines.

>>> from geomprobe.audit import run_audit
>>> result = run_audit("default", out_dir="audit", quick=True, fail_if=["aqi.max<0.3"], progress=True)
>>> result.metrics["aqi"]["max"], result.html_path, result.failed

See ``docs/audit.md`` for the metrics.json schema and the ``--fail-if`` syntax.
"""

from geomprobe.audit.conditions import ConditionResult, FailCondition, evaluate_conditions, parse_condition, parse_conditions
from geomprobe.audit.pipeline import FULL, QUICK, AuditResult, AuditSizes, audited_layers, choose_steering_layer, load_metrics, run_audit
from geomprobe.audit.schema import FIELDS, SCHEMA_NAME, SCHEMA_VERSION, schema_markdown, validate_metrics

__all__ = [
    "AuditResult", "AuditSizes", "ConditionResult", "FIELDS", "FULL", "FailCondition", "QUICK", "SCHEMA_NAME",
    "SCHEMA_VERSION", "audited_layers", "choose_steering_layer", "evaluate_conditions", "load_metrics",
    "parse_condition", "parse_conditions", "run_audit", "schema_markdown", "validate_metrics",
]
