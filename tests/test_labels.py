"""The one positive-class rule (geomprobe.core.labels) and the stages that read it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import POSITIVE_NAMES, binary_labels, choose_positive

NAMES = ["harmless", "harmful", "control", "a", "b"]


def _rest_by_hand(labels: np.ndarray, names: list[str], positive: str | None) -> tuple[np.ndarray, np.ndarray, str, tuple]:
    """Positive vs every other labelled row, written out independently."""
    if positive is None:
        lowered = [n.lower() for n in names]
        hits = [c for c in POSITIVE_NAMES if c in lowered]
        positive = names[lowered.index(hits[0])] if hits else names[1]
    pos = names.index(positive)
    rows = np.array([i for i, v in enumerate(labels) if v >= 0], dtype=np.int64)
    y = np.array([int(labels[i] == pos) for i in rows], dtype=np.int64)
    negatives = tuple(sorted({names[labels[i]] for i in rows if labels[i] != pos}))
    return rows, y, positive, negatives


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-1, 4), min_size=1, max_size=40),
    st.integers(2, 5),
    st.sampled_from([None, "harmless", "harmful", "control"]),
)
def test_rest_negative_matches_the_rule_written_out(values, n_names, positive):
    names = NAMES[:n_names]
    labels = np.array([v if v < n_names else -1 for v in values])
    if positive is not None and positive not in names:
        with pytest.raises(GeomprobeError, match="--positive-label"):
            binary_labels(labels, names, positive, rest_negative=True, require_both=False)
        return
    choice = binary_labels(labels, names, positive, rest_negative=True, require_both=False)
    rows, y, pos_name, negatives = _rest_by_hand(labels, names, positive)
    np.testing.assert_array_equal(choice.rows, rows)
    np.testing.assert_array_equal(choice.y, y)
    assert choice.names[1] == pos_name and choice.negatives == negatives


def test_rest_negative_against_three_labels_and_require_both():
    labels = np.array([0, 1, 2, 1, -1, 0, 2])
    choice = binary_labels(labels, ["harmless", "harmful", "control"], rest_negative=True)
    assert choice.names == ("not-harmful", "harmful") and choice.negatives == ("control", "harmless")
    np.testing.assert_array_equal(choice.rows, [0, 1, 2, 3, 5, 6])
    np.testing.assert_array_equal(choice.y, [0, 1, 0, 1, 0, 0])
    # Without rest_negative three labels in use need a choice.
    with pytest.raises(GeomprobeError, match="3 labels are in use"):
        binary_labels(labels, ["harmless", "harmful", "control"])
    only_negatives = np.array([0, 0, 2])
    with pytest.raises(GeomprobeError, match="no labelled rows of class 'harmful'"):
        binary_labels(only_negatives, ["harmless", "harmful", "control"], rest_negative=True)
    loose = binary_labels(only_negatives, ["harmless", "harmful", "control"], rest_negative=True, require_both=False)
    assert not loose.y.any() and loose.names[1] == "harmful"


def test_label_pair_and_choose_positive():
    labels = np.array([0, 1, 2, 1, 0])
    pair = binary_labels(labels, ["harmless", "harmful", "control"], label_pair=("control", "harmful"))
    np.testing.assert_array_equal(pair.rows, [1, 2, 3])
    np.testing.assert_array_equal(pair.y, [1, 0, 1])
    assert pair.names == ("control", "harmful") and pair.negatives == ("control",)
    assert choose_positive(["honest", "dishonest"]) == 1 and choose_positive(["x", "y"]) == 1
