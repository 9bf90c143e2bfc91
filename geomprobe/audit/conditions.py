"""``--fail-if`` gates: ``PATH OP VALUE`` conditions on ``metrics.json`` that fail a checkpoint.

``PATH`` is a dotted path into metrics.json (see docs/audit.md). Through a list of records a
field name collects that field of every record (``aqi.per_layer.p_value``); a list ends with one
aggregation: ``max``, ``min``, ``mean``, ``median``, ``sum``, ``count``, ``first`` or ``last``
(``aqi.max`` is a stored number, ``probes.auroc.max`` aggregates the per-layer list). A number
index picks one item (``steering.kl.0``). ``OP`` is one of ``< <= > >= == !=``; ``VALUE`` is a
number, ``true``/``false``, or (for ``==``/``!=``) a string.

A condition that holds is a failure: ``--fail-if "aqi.max<0.3"`` fails the checkpoint when the
best layer's AQI is below 0.3. A path whose value is null (undefined, e.g. an infinite index or
NaN) also fails, because nothing can be vouched for. Conditions are parsed and their paths
checked against the schema before any work is done.
"""

from __future__ import annotations

import math
import operator
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from geomprobe.audit.schema import AGAINST_ONLY, AGGREGATIONS, FIELD_MAP, children
from geomprobe.core.errors import GeomprobeError

OPERATORS = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_SYNTAX = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")
_EXAMPLE = "e.g. 'aqi.max<0.3' or 'probes.auroc.max<0.8'"


@dataclass(frozen=True)
class Step:
    kind: str  # key | project | index | aggregate
    name: str


@dataclass(frozen=True)
class FailCondition:
    """One parsed ``--fail-if`` expression."""

    text: str
    path: str
    op: str
    value: float | bool | str
    steps: tuple[Step, ...]
    final_type: str

    def evaluate(self, metrics: dict[str, Any]) -> ConditionResult:
        try:
            actual = resolve(metrics, self.steps)
        except LookupError as exc:
            return ConditionResult(self, None, True, f"{self.path} is not in metrics.json ({exc})")
        if actual is None or (isinstance(actual, float) and not math.isfinite(actual)):
            return ConditionResult(self, actual, True, f"{self.path} is undefined (null)")
        if isinstance(self.value, str) and not isinstance(actual, str):
            return ConditionResult(self, actual, True, f"{self.path} = {actual!r} is not a string")
        holds = bool(OPERATORS[self.op](actual, self.value))
        return ConditionResult(self, actual, holds, f"{self.path} = {_show(actual)}")


@dataclass(frozen=True)
class ConditionResult:
    condition: FailCondition
    actual: Any
    failed: bool
    detail: str

    def line(self) -> str:
        status = "FAILED" if self.failed else "passed"
        return f"--fail-if {self.condition.text}: {status} ({self.detail})"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


def _parse_value(text: str, op: str, expr: str) -> float | bool | str:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise GeomprobeError(f"--fail-if {expr!r}: the value must be a finite number; {_EXAMPLE}")
        return value
    if op not in ("==", "!="):
        raise GeomprobeError(f"--fail-if {expr!r}: {text!r} is not a number; {_EXAMPLE}")
    return text.strip("'\"")


def _schema_steps(path: str, expr: str) -> tuple[tuple[Step, ...], str]:
    """Walk ``path`` through the schema; return the steps and the type of the value reached."""
    parts = path.split(".")
    norm, kind, projected = "", "object", False
    steps: list[Step] = []
    for i, part in enumerate(parts):
        is_list = kind.startswith("list[") or projected
        last = i == len(parts) - 1
        if part in AGGREGATIONS and is_list:
            if not last:
                raise GeomprobeError(f"--fail-if {expr!r}: aggregation .{part} must come last in the path")
            element = kind[5:-1] if kind.startswith("list[") else kind
            if part != "count" and element not in ("number", "integer", "bool"):
                raise GeomprobeError(f"--fail-if {expr!r}: .{part} needs numbers, but {'.'.join(parts[:i])} holds {element}s")
            steps.append(Step("aggregate", part))
            return tuple(steps), "number"
        if re.fullmatch(r"-?\d+", part) and kind.startswith("list[") and not projected:
            steps.append(Step("index", part))
            if kind == "list[object]":
                norm, kind = norm + "[]", "object"
            else:
                kind = kind[5:-1]
            continue
        if kind == "list[object]":
            candidate = f"{norm}[].{part}"
            if candidate in FIELD_MAP:
                steps.append(Step("project", part))
                norm, kind, projected = candidate, FIELD_MAP[candidate].type.removesuffix("|null"), True
                continue
        candidate = f"{norm}.{part}" if norm else part
        if norm == "settings.datasets":
            candidate = "settings.datasets.*"
        if candidate in FIELD_MAP and not kind.startswith("list["):
            steps.append(Step("key", part))
            norm, kind = candidate, FIELD_MAP[candidate].type.removesuffix("|null")
            continue
        options = [c for c in (children(norm) if norm else children("")) if not c.endswith("[]")]
        if kind == "list[object]":
            options = children(norm + "[]") + [str(a) for a in AGGREGATIONS if a == "count"]
        elif is_list:
            options = list(AGGREGATIONS)
        where = ".".join(parts[:i]) or "metrics.json"
        raise GeomprobeError(
            f"--fail-if {expr!r}: {where} has no {part!r}; choose one of {', '.join(options[:12])}"
            f"{' ...' if len(options) > 12 else ''} (fields: docs/audit.md)"
        )
    if kind.startswith("list[") or projected:
        raise GeomprobeError(f"--fail-if {expr!r}: {path} is a list; end the path with .max, .min, .mean, ... ({_EXAMPLE})")
    if kind == "object":
        raise GeomprobeError(f"--fail-if {expr!r}: {path} is an object; pick a number inside it ({_EXAMPLE})")
    return tuple(steps), kind


def parse_condition(expr: str, *, against: bool = True) -> FailCondition:
    """Parse and schema-check one ``--fail-if`` expression (GeomprobeError when it is bad)."""
    match = _SYNTAX.match(str(expr))
    if not match:
        raise GeomprobeError(f"--fail-if {expr!r} is not PATH OP VALUE with OP one of < <= > >= == !=; {_EXAMPLE}")
    path, op, raw = match.groups()
    value = _parse_value(raw, op, expr)
    steps, kind = _schema_steps(path, expr)
    if isinstance(value, str) and kind != "string":
        raise GeomprobeError(f"--fail-if {expr!r}: {path} is a {kind}; compare it with a number")
    if not isinstance(value, str) and kind == "string":
        raise GeomprobeError(f"--fail-if {expr!r}: {path} is a string; compare it with == or != and a word")
    if isinstance(value, bool) != (kind == "bool") and kind != "string":
        raise GeomprobeError(f"--fail-if {expr!r}: {path} is a {kind}; compare it with {'true/false' if kind == 'bool' else 'a number'}")
    if not against and path.split(".")[0] in AGAINST_ONLY:
        raise GeomprobeError(f"--fail-if {expr!r} needs a second checkpoint; add --against MODEL")
    return FailCondition(str(expr).strip(), path, op, value, steps, kind)


def parse_conditions(exprs: Sequence[str] | None, *, against: bool = True) -> list[FailCondition]:
    return [parse_condition(e, against=against) for e in (exprs or [])]


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "max": max, "min": min, "sum": sum, "mean": statistics.fmean, "median": statistics.median,
}


def _aggregate(values: list[Any], how: str) -> Any:
    if how == "count":
        return len(values)
    numbers = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not numbers:
        return None
    if how == "first":
        return None if values[0] is None else float(values[0])
    if how == "last":
        return None if values[-1] is None else float(values[-1])
    return _REDUCERS[how](numbers)


def resolve(metrics: Any, steps: Sequence[Step]) -> Any:
    """Follow parsed steps through a metrics dict (LookupError when a part is absent)."""
    value: Any = metrics
    projected = False
    for step in steps:
        if step.kind == "aggregate":
            if not isinstance(value, list):
                raise LookupError(f"{step.name} needs a list")
            return _aggregate(value, step.name)
        if step.kind == "index":
            if not isinstance(value, list):
                raise LookupError("not a list")
            index = int(step.name)
            if not -len(value) <= index < len(value):
                raise LookupError(f"index {index} out of range for {len(value)} items")
            value = value[index]
        elif step.kind == "project" or (projected and step.kind == "key"):
            if not isinstance(value, list):
                raise LookupError(f"{step.name} needs a list of records")
            value = [item.get(step.name) if isinstance(item, dict) else None for item in value]
            projected = True
        else:
            if value is None:
                return None
            if not isinstance(value, dict) or step.name not in value:
                raise LookupError(f"no {step.name!r}")
            value = value[step.name]
    return value


def evaluate_conditions(conditions: Sequence[FailCondition], metrics: dict[str, Any]) -> list[ConditionResult]:
    return [c.evaluate(metrics) for c in conditions]
