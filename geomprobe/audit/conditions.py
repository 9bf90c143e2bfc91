"""``--fail-if`` gates: ``PATH OP VALUE`` conditions on ``metrics.json`` that fail a checkpoint.

``PATH`` is a dotted path into metrics.json (see docs/audit.md). Through a list of records a
field name collects that field of every record (``aqi.per_layer.p_value``); a list ends with one
aggregation: ``max``, ``min``, ``mean``, ``median``, ``sum``, ``count``, ``first`` or ``last``
(``aqi.max`` is a stored number, ``probes.auroc.max`` aggregates the per-layer list). A number
index picks one item (``steering.kl.0``). ``OP`` is one of ``< <= > >= == !=``; ``VALUE`` is a
number, ``true``/``false``, or (for ``==``/``!=``) a string.

A condition that holds is a failure: ``--fail-if "aqi.max<0.3"`` fails the checkpoint when the
best layer's AQI is below 0.3. Any null, NaN or infinite value the expression reads also fails it,
naming where (``min`` over ``[0.95, null, 0.91]`` fails at ``aqi.per_layer[1].aqi``): an
aggregate that skipped it would vouch for a layer nobody measured. So does a value of the wrong
type (a forged or hand-edited metrics.json). ``count`` reads only how many items there are and
``first``/``last`` only that one item. Conditions are parsed and their paths checked against the
schema before any work is done.
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
        except Undefined as exc:
            return ConditionResult(self, None, True, f"{self.path} reads {exc.shown} at {exc.where}: undefined, so it fails")
        except LookupError as exc:
            return ConditionResult(self, None, True, f"{self.path} is not in metrics.json ({exc})")
        if isinstance(self.value, str):
            if not isinstance(actual, str):
                return ConditionResult(self, actual, True, f"{self.path} = {_show(actual)} is not a string")
        elif isinstance(self.value, bool):
            if not isinstance(actual, bool):
                return ConditionResult(self, actual, True, f"{self.path} = {_show(actual)} is not true/false")
        elif not _is_number(actual):
            return ConditionResult(self, actual, True, f"{self.path} = {_show(actual)} is not a number")
        holds = bool(OPERATORS[self.op](actual, self.value))
        return ConditionResult(self, actual, holds, f"{self.path} = {_show(actual)}")


class Undefined(Exception):
    """A null, NaN or infinite value where an expression reads one; ``where`` is its place in metrics.json."""

    def __init__(self, where: str, value: Any, shown: str | None = None) -> None:
        super().__init__(where)
        self.where = where
        self.shown = shown or ("null" if value is None else _show(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _defined(value: Any, where: str) -> Any:
    """``value`` unless it is null or a non-finite number (raise :class:`Undefined` naming ``where``)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise Undefined(where, value)
    return value


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
        if candidate not in FIELD_MAP and f"{norm}.*" in FIELD_MAP:
            candidate = f"{norm}.*"  # a free key: a prompt-set role, a kind of preference pair, ...
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
        raise GeomprobeError(
            f"--fail-if {expr!r}: {path} is a {kind}; compare it with {'true/false' if kind == 'bool' else 'a number'}"
        )
    if not against and path.split(".")[0] in AGAINST_ONLY:
        raise GeomprobeError(f"--fail-if {expr!r} needs a second checkpoint; add --against MODEL")
    return FailCondition(str(expr).strip(), path, op, value, steps, kind)


def parse_conditions(exprs: Sequence[str] | None, *, against: bool = True) -> list[FailCondition]:
    return [parse_condition(e, against=against) for e in (exprs or [])]


_REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "max": max,
    "min": min,
    "sum": sum,
    "mean": statistics.fmean,
    "median": statistics.median,
}


def _aggregate(values: list[Any], how: str, wheres: list[str]) -> Any:
    """Aggregate a list whose items sit at ``wheres``; every item read must be a defined number."""
    if how == "count":
        return len(values)
    if how in ("first", "last"):
        at = 0 if how == "first" else -1
        values, wheres = [values[at]], [wheres[at]]
    numbers = []
    for value, where in zip(values, wheres):
        _defined(value, where)
        if not isinstance(value, (int, float)):  # bools count as 0/1, as the schema allows
            raise LookupError(f"{where} holds {_show(value)}, not a number")
        numbers.append(float(value))
    if how in ("first", "last"):
        return numbers[0]
    result = _REDUCERS[how](numbers)
    return _defined(result, f"the {how} of {wheres[0].rsplit('[', 1)[0]}")  # e.g. a sum that overflowed


def resolve(metrics: Any, steps: Sequence[Step]) -> Any:
    """Follow parsed steps through a metrics dict.

    LookupError when a part is absent; :class:`Undefined` when a value on the way (or any item an
    aggregation reads) is null, NaN or infinite.
    """
    value: Any = metrics
    where = ""
    wheres: list[str] = []  # the place of each item once a list of records has been projected
    projected = False
    for step in steps:
        if step.kind == "aggregate":
            if not isinstance(value, list):
                raise LookupError(f"{step.name} needs a list")
            if not projected:
                wheres = [f"{where}[{i}]" for i in range(len(value))]
            if not value and step.name != "count":  # nothing measured: undefined, and so a failed gate
                raise Undefined(where or "metrics.json", value, shown="an empty list")
            return _aggregate(value, step.name, wheres)
        if step.kind == "index":
            if not isinstance(value, list):
                raise LookupError("not a list")
            index = int(step.name)
            if not -len(value) <= index < len(value):
                raise LookupError(f"index {index} out of range for {len(value)} items")
            where = f"{where}[{index % len(value)}]"
            value = _defined(value[index], where)
        elif step.kind == "project" or (projected and step.kind == "key"):
            if not isinstance(value, list):
                raise LookupError(f"{step.name} needs a list of records")
            if not projected:
                wheres = [f"{where}[{i}]" for i in range(len(value))]
            items = []
            for item, item_where in zip(value, wheres):
                if not isinstance(item, dict):
                    raise Undefined(item_where, item) if item is None else LookupError(f"{item_where} is not a record")
                items.append(item.get(step.name))
            value, wheres = items, [f"{w}.{step.name}" for w in wheres]
            projected = True
        else:
            if not isinstance(value, dict):
                raise LookupError(f"{where or 'metrics.json'} is not an object")
            if step.name not in value:
                raise LookupError(f"no {step.name!r}")
            where = f"{where}.{step.name}" if where else step.name
            value = _defined(value[step.name], where)
    if projected:
        raise LookupError("a list needs an aggregation")
    return value


def evaluate_conditions(conditions: Sequence[FailCondition], metrics: dict[str, Any]) -> list[ConditionResult]:
    return [c.evaluate(metrics) for c in conditions]
