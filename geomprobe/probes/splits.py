"""Train/test splits that keep both members of a pair on the same side, stratified by label."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from geomprobe.core.errors import GeomprobeError


def pair_groups(pair_ids: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """Group id per row: the pair id, or a fresh id for rows with ``-1`` (no pair)."""
    if pair_ids is None:
        if n is None:
            raise GeomprobeError("give pair_ids or the number of rows")
        return np.arange(n, dtype=np.int64)
    pair_ids = np.asarray(pair_ids, dtype=np.int64)
    groups = pair_ids.copy()
    lone = pair_ids < 0
    start = int(pair_ids.max()) + 1 if len(pair_ids) and pair_ids.max() >= 0 else 0
    groups[lone] = start + np.arange(int(lone.sum()))
    return groups


def pair_kfold(
    y: np.ndarray, pair_ids: np.ndarray | None = None, n_splits: int = 5, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold over pair groups: yields ``(train_rows, test_rows)``."""
    y = np.asarray(y)
    groups = pair_groups(pair_ids, len(y))
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise GeomprobeError(f"n_splits must be at least 2; got {n_splits}")
    if n_groups < n_splits:
        raise GeomprobeError(
            f"only {n_groups} pairs/rows for {n_splits} folds; use fewer folds (a larger --test-size) or more data"
        )
    _, counts = np.unique(y, return_counts=True)
    if len(counts) and (counts < n_splits).all():  # scikit-learn refuses this with a ValueError (a traceback before)
        raise GeomprobeError(
            f"every class has fewer rows ({int(counts.max())} at most) than the {n_splits} folds; "
            "use fewer folds (a larger --test-size) or more data"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(y)), y, groups):
        yield np.sort(train), np.sort(test)


def pair_train_test_split(
    y: np.ndarray, pair_ids: np.ndarray | None = None, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split of about ``test_size`` of the pairs, stratified, seeded; pairs never straddle."""
    if not 0 < test_size < 1:
        raise GeomprobeError(f"test_size must be between 0 and 1 (e.g. 0.2); got {test_size}")
    n_splits = max(2, int(round(1 / test_size)))
    train, test = next(pair_kfold(y, pair_ids, n_splits=n_splits, seed=seed))
    y = np.asarray(y)
    for name, rows in (("training", train), ("held-out", test)):
        if len(np.unique(y[rows])) < 2:
            raise GeomprobeError(f"the {name} split has one class only; use more data or a different --test-size")
    return train, test
