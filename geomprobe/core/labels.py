"""Which class is which: one rule for every stage.

The "positive" class is the behaviour a probe detects, a steering vector adds and AQI contrasts
against the reference: an explicit ``positive_label`` if given, else the first label whose name
reads as the unsafe side (``harmful``, ``dishonest``, ...), else the second label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import check_unique_names

POSITIVE_NAMES = (
    "harmful",
    "dishonest",
    "deceptive",
    "deception",
    "unsafe",
    "toxic",
    "lie",
    "lying",
    "liar",
    "untruthful",
    "refusal",
    "refuse",
    "jailbreak",
    "misaligned",
    "positive",
)


def choose_positive(label_names: Sequence[str], positive_label: str | None = None) -> int:
    """Index (into ``label_names``) of the positive class."""
    names = [str(n) for n in label_names]
    check_unique_names(names)
    if positive_label is not None:
        if positive_label not in names:
            raise GeomprobeError(
                f"--positive-label {positive_label!r} is not in this cache's labels ({', '.join(names) or 'none'}); "
                "pass one of those"
            )
        return names.index(positive_label)
    lowered = [n.lower() for n in names]
    for candidate in POSITIVE_NAMES:
        if candidate in lowered:
            return lowered.index(candidate)
    if len(names) < 2:
        raise GeomprobeError(f"found {len(names)} label name(s) ({', '.join(names) or 'none'}); this needs two labelled classes")
    return 1


@dataclass(frozen=True)
class BinaryLabels:
    """Rows taking part in a two-class comparison and their 0/1 labels (1 = positive)."""

    rows: np.ndarray
    y: np.ndarray
    names: tuple[str, str]  # (negative, positive)
    negatives: tuple[str, ...] = ()  # the labels making up the negative class, sorted (several for "the rest")


def binary_labels(
    labels: np.ndarray,
    label_names: Sequence[str],
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    rest_negative: bool = False,
    require_both: bool = True,
) -> BinaryLabels:
    """Pick the two classes: ``label_pair=(negative, positive)``, ``positive_label`` vs the rest, or
    the two labels in use (positive by :func:`choose_positive`). Unlabelled rows (-1) are dropped.

    ``rest_negative=True`` (probes) takes the positive class by :func:`choose_positive` over all
    label names when none is given, against every other labelled row, however many labels are in
    use. ``require_both=False`` leaves the check that both classes have rows to the caller.
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = [str(n) for n in label_names]
    check_unique_names(names)  # a repeat would let name lookups pick the wrong class (a reversed vector)
    present = sorted({int(v) for v in labels.tolist() if v >= 0})
    if rest_negative and label_pair is None and positive_label is None:
        positive_label = names[choose_positive(names)]

    def index(name: str, option: str = "label") -> int:
        if name not in names:
            raise GeomprobeError(f"{option} {name!r} is not in this cache; it has {', '.join(names) or 'no labels'}")
        return names.index(name)

    if label_pair is not None:
        if len(label_pair) != 2 or label_pair[0] == label_pair[1]:
            raise GeomprobeError("give exactly two different labels: NEGATIVE POSITIVE")
        if positive_label is not None and positive_label != label_pair[1]:
            raise GeomprobeError("--positive-label must be the second of --labels when both are given")
        neg, pos = index(label_pair[0]), index(label_pair[1])
        rows = np.flatnonzero((labels == neg) | (labels == pos))
        pair = (names[neg], names[pos])
    elif positive_label is not None:
        pos = index(positive_label, "--positive-label")
        rows = np.flatnonzero(labels >= 0)
        others = [names[i] for i in present if i != pos]
        pair = (others[0] if len(others) == 1 else f"not-{positive_label}", names[pos])
    else:
        shown = ", ".join(names[i] for i in present) or "none"
        if len(present) < 2:
            raise GeomprobeError(f"only {len(present)} label in use ({shown}); need two classes of labelled rows")
        if len(present) != 2:
            raise GeomprobeError(
                f"{len(present)} labels are in use ({shown}); choose --positive-label NAME or --labels NEGATIVE POSITIVE"
            )
        in_use = [names[i] for i in present]
        pos = present[choose_positive(in_use)]
        neg = present[0] if pos == present[1] else present[1]
        rows = np.flatnonzero((labels == neg) | (labels == pos))
        pair = (names[neg], names[pos])
    y = (labels[rows] == pos).astype(np.int64)
    if require_both:
        for cls, name in enumerate(pair):
            if not (y == cls).any():
                raise GeomprobeError(f"no labelled rows of class {name!r}; need rows of both classes")
    negatives = tuple(sorted({names[v] for v in labels[rows].tolist() if v != pos}))
    return BinaryLabels(rows, y, pair, negatives)
