"""``--fail-if`` over random metric trees against a brute-force evaluator (issue 21, part 3).

The trees hold the shapes metrics.json has (numbers, lists of numbers, lists of records, nested
objects that may be null) and the values a damaged or hand-edited file may hold: null, NaN,
infinities, strings, bools, records that are not objects, missing keys. The reference walks the
tree with plain loops and numpy and applies the documented rule: any null, NaN or infinite value
the expression reads fails the gate, and so does a missing path or a value of the wrong type.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geomprobe.audit import evaluate_conditions, parse_condition

AGGS = ("max", "min", "mean", "median", "sum", "count", "first", "last")
RECORD_FIELDS = ("aqi", "p_value", "dunn")

leaf = st.one_of(
    st.integers(-40, 40).map(lambda k: k / 8),  # eighths: sums and means are exact, so no rounding ties
    st.integers(-3, 3),
    st.sampled_from([None, math.nan, math.inf, -math.inf, "0.5", True, False]),
)


@st.composite
def record(draw):
    if draw(st.integers(0, 14)) == 0:
        return draw(st.sampled_from([None, 3, "x", [1.0]]))  # not a record at all
    return {f: draw(leaf) for f in RECORD_FIELDS if draw(st.integers(0, 9)) > 0}  # a key may be missing


@st.composite
def metrics_tree(draw):
    tree: dict = {"aqi": {}, "probes": {}}
    if draw(st.integers(0, 9)) > 0:
        tree["aqi"]["max"] = draw(leaf)
    if draw(st.integers(0, 9)) > 0:
        tree["aqi"]["per_layer"] = draw(st.lists(record(), max_size=5))
    if draw(st.integers(0, 9)) > 0:
        tree["probes"]["auroc"] = draw(st.lists(leaf, max_size=5))
    if draw(st.integers(0, 12)) == 0:
        tree["aqi"] = None  # a whole section null
    return tree


FAIL = "fail"  # the reference's verdict for "the gate fails without comparing"


def _defined_number(value) -> bool:
    return isinstance(value, (int, float)) and value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _reference_values(tree, path: list[str]):
    """(values read, is_list) or FAIL, by hand for the three shapes used here."""
    section = tree.get(path[0])
    if not isinstance(section, dict):
        return FAIL
    if path[1] == "max":
        return ([section["max"]], False) if "max" in section else FAIL
    if path[1] == "auroc":
        return (list(section["auroc"]), True) if isinstance(section.get("auroc"), list) else FAIL
    records = section.get("per_layer")
    if not isinstance(records, list):
        return FAIL
    if len(path) > 2 and path[2].isdigit():  # aqi.per_layer.<i>.<field>
        index = int(path[2])
        if index >= len(records) or not isinstance(records[index], dict) or path[3] not in records[index]:
            return FAIL
        return [records[index][path[3]]], False
    values = []
    for item in records:
        if not isinstance(item, dict):
            return FAIL
        values.append(item.get(path[2]))
    return values, True


def reference(tree, expr_path: str, op: str, threshold: float):
    """True when the gate fails."""
    parts = expr_path.split(".")
    agg = parts[-1] if parts[-1] in AGGS and expr_path != "aqi.max" else None  # aqi.max is a stored number
    got = _reference_values(tree, parts[:-1] if agg else parts)
    if got == FAIL:
        return True
    values, is_list = got
    if agg == "count":
        actual = float(len(values))
    else:
        if agg in ("first", "last"):
            if not values:
                return True
            values = [values[0] if agg == "first" else values[-1]]
        if not values or not all(_defined_number(v) for v in values):
            return True
        array = np.array([float(v) for v in values])
        actual = {"max": np.max, "min": np.min, "mean": np.mean, "median": np.median, "sum": np.sum}.get(agg, lambda a: a[0])(
            array
        )
        if not is_list and isinstance(values[0], bool):
            return True  # a bool where the schema has a number
    ops = {"<": actual < threshold, "<=": actual <= threshold, ">": actual > threshold, ">=": actual >= threshold}
    return bool(ops[op])


PATHS = st.one_of(
    st.just("aqi.max"),
    st.builds(lambda f, a: f"aqi.per_layer.{f}.{a}", st.sampled_from(RECORD_FIELDS[:2] + ("dunn",)), st.sampled_from(AGGS)),
    st.builds(lambda a: f"probes.auroc.{a}", st.sampled_from(AGGS)),
    st.builds(lambda i, f: f"aqi.per_layer.{i}.{f}", st.integers(0, 5), st.sampled_from(RECORD_FIELDS)),
)


@settings(max_examples=600, deadline=None)
@given(
    tree=metrics_tree(), path=PATHS, op=st.sampled_from(["<", "<=", ">", ">="]), threshold=st.sampled_from([-1.0, 0.0, 0.5, 2.0])
)
def test_gate_matches_brute_force(tree, path, op, threshold):
    [result] = evaluate_conditions([parse_condition(f"{path}{op}{threshold}")], tree)
    expected = reference(tree, path, op, threshold)
    if not expected:
        assert not result.failed, (path, tree, result.detail)
        return
    assert result.failed, (path, tree, result.detail)


def test_the_issue_example_fails_naming_the_null():
    tree = {"aqi": {"per_layer": [{"aqi": 0.95}, {"aqi": None}, {"aqi": 0.91}]}}
    [result] = evaluate_conditions([parse_condition("aqi.per_layer.aqi.min<0.5")], tree)
    assert result.failed and "aqi.per_layer[1].aqi" in result.detail and "null" in result.detail
    [result] = evaluate_conditions([parse_condition("aqi.per_layer.aqi.count<2")], tree)
    assert not result.failed  # count reads how many records there are, not their values
    [result] = evaluate_conditions([parse_condition("aqi.per_layer.aqi.first<0.5")], tree)
    assert not result.failed  # first reads record 0 only
    [result] = evaluate_conditions([parse_condition("aqi.per_layer.aqi.last>0.99")], tree)
    assert not result.failed
    [result] = evaluate_conditions([parse_condition("probes.auroc.max<0.5")], {"probes": {"auroc": [0.9, float("nan")]}})
    assert result.failed and "probes.auroc[1]" in result.detail and "nan" in result.detail
    [result] = evaluate_conditions([parse_condition("probes.auroc.max<0.5")], {"probes": {"auroc": []}})
    assert result.failed and "empty list" in result.detail
    [result] = evaluate_conditions([parse_condition("aqi.max<0.5")], {"aqi": {"max": "0.9"}})
    assert result.failed and "not a number" in result.detail
