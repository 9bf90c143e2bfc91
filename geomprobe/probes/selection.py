"""Choosing a probe's layer on rows disjoint from the rows its number is reported on.

The best layer by held-out AUROC is a maximum over layers taken on the held-out rows themselves: with
30 layers and a few dozen held-out rows it is optimistic (selection on test data, multiple
comparisons). So a layer is chosen here on a validation split carved from the *training* rows (pairs
kept together): probes fitted on the rest of the training rows, AUROC on the validation rows. The
chosen layer's number is then read on the held-out rows (or on another cache), which the choice
never saw. :func:`headline` reads a :class:`ProbeResult` at that layer, with a bootstrap interval,
beside the maximum over layers, labelled as one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geomprobe.core import stats
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.probes.metrics import auroc
from geomprobe.probes.splits import pair_train_test_split
from geomprobe.probes.sweep import fit_layers

VALIDATION_SIZE = 0.25  # share of the training pairs held back to choose the layer
VALIDATION_RULE = "validation split of the training rows"


def validation_auroc(
    X: np.ndarray,
    y: np.ndarray,
    pairs: np.ndarray | None,
    method: str,
    *,
    rows: np.ndarray | None = None,
    val_size: float = VALIDATION_SIZE,
    seed: int = 0,
    device: str = "auto",
    **params: Any,
) -> tuple[np.ndarray, int, int] | None:
    """AUROC per layer on a validation split of the training rows ``rows`` (default: all) of ``X`` (L, N, d),
    with probes fitted on the other training rows. ``(aurocs (L,), n_fit, n_validation)``, or None when the
    rows are too few to carve a validation split with both classes on each side. ``X`` is indexed once per
    side, so no copy of all training rows is made."""
    y = np.asarray(y)
    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    groups = None if pairs is None else np.asarray(pairs)[rows]
    try:
        with warnings.catch_warnings():  # a class smaller than the folds is handled below, not worth a warning
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            fit_part, val_part = pair_train_test_split(y[rows], groups, test_size=val_size, seed=seed)
        fit_rows, val_rows = rows[fit_part], rows[val_part]
        fit = fit_layers(
            X[:, fit_rows],
            y[fit_rows],
            method,
            pairs=None if pairs is None else np.asarray(pairs)[fit_rows],
            device=device,
            **params,
        )
    except GeomprobeError:
        return None
    return np.atleast_1d(np.asarray(auroc(fit.decision_function(X[:, val_rows]), y[val_rows]))), len(fit_rows), len(val_rows)


def selection_record(
    hooks: Sequence[str],
    values: Sequence[float] | None,
    *,
    n_fit: int = 0,
    n_validation: int = 0,
    val_size: float = VALIDATION_SIZE,
    reason: str = "",
) -> dict[str, Any]:
    """What a probe stores as ``meta["selection"]``: the validation AUROC per hook and the chosen hook
    (highest finite validation AUROC; the earlier hook on a tie), or why none was chosen."""
    finite = [(v, -i) for i, v in enumerate(values or []) if v is not None and np.isfinite(v)]
    if not finite:
        return {
            "rule": "none",
            "reason": reason or "no layer has a finite validation AUROC",
            "hook": None,
            "validation_auroc": [None if v is None or not np.isfinite(v) else float(v) for v in values or []],
        }
    _, neg = max(finite)
    hook = hooks[-neg]
    return {
        "rule": VALIDATION_RULE,
        "val_size": val_size,
        "n_fit": int(n_fit),
        "n_validation": int(n_validation),
        "hook": hook,
        "layer": _layer(hook),
        "validation_auroc": [None if not np.isfinite(v) else float(v) for v in values or []],
    }


def _layer(hook: str) -> int:
    try:
        return hook_layer(hook)
    except GeomprobeError:
        return -1


@dataclass
class Headline:
    """A probe's reported number: AUROC at a layer chosen on other rows, its interval, and the maximum
    over layers on the evaluated rows (optimistic, shown as one)."""

    hook: str | None  # None: no layer could be chosen on disjoint data
    layer: int | None
    chosen_on: str
    auroc: float | None
    auroc_ci_low: float | None
    auroc_ci_high: float | None
    n_layers: int
    max_auroc: float | None  # the maximum over the evaluated layers, on the evaluated rows
    max_hook: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for the CLI: the chosen layer's AUROC first, the maximum over layers labelled as one."""

        def f(v: float | None) -> str:
            return "nan" if v is None or not np.isfinite(v) else f"{v:.3f}"

        most = (
            f"max over {self.n_layers} layers {f(self.max_auroc)} at {self.max_hook} (chosen on these rows: "
            "optimistic, a maximum over layers)"
        )
        if self.hook is None:
            return f"no layer chosen on disjoint data ({self.chosen_on}); {most}"
        interval = "" if self.auroc_ci_low is None else f" [{f(self.auroc_ci_low)}, {f(self.auroc_ci_high)}]"
        return f"AUROC {f(self.auroc)}{interval} at {self.hook} (layer chosen on the {self.chosen_on}); {most}"


def chosen_hook(probes: Any, *, eval_rows: str = "held-out", eval_cache: str | None = None) -> tuple[str | None, str]:
    """The probe's layer for a headline, chosen on rows disjoint from the evaluated ones, and what it was chosen on.

    The probe's recorded validation choice (``meta["selection"]``, made inside its training rows) is
    disjoint from any evaluated rows except its own training rows. An older probe without one falls back
    to its held-out metrics, which are disjoint from another cache's rows only."""
    selection = probes.meta.get("selection") or {}
    if selection.get("hook") in probes.hooks:
        return selection["hook"], VALIDATION_RULE
    metrics = [m for m in probes.meta.get("metrics") or [] if m.get("auroc") is not None and np.isfinite(m["auroc"])]
    other_cache = eval_cache is not None and eval_cache != probes.meta.get("train_cache")
    if metrics and eval_rows == "all" and other_cache:
        return max(metrics, key=lambda m: m["auroc"])["hook"], "probe's held-out training split (another cache)"
    return None, selection.get("reason") or "the probe records no validation choice"


def headline(
    result: Any, hook: str | None, chosen_on: str, *, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0
) -> Headline:
    """``result`` (a :class:`ProbeResult`) read at ``hook`` with a stratified bootstrap interval, beside its
    maximum over layers."""
    records = [r for r in result.records if r.get("auroc") is not None and np.isfinite(r["auroc"])]
    top = max(records, key=lambda r: r["auroc"]) if records else None
    value = low = high = None
    if hook is not None and hook in result.scores and result.y is not None:
        scores, y = np.asarray(result.scores[hook], dtype=np.float64), np.asarray(result.y).astype(bool)
        if y.any() and (~y).any():
            value = float(auroc(scores, y))
            if n_bootstrap > 0:  # resampled within each class (positives first), as every AUROC interval here
                res = stats.bootstrap(
                    lambda rows: float(auroc(scores[rows], y[rows])),
                    [np.flatnonzero(y), np.flatnonzero(~y)],
                    n_bootstrap=n_bootstrap,
                    level=level,
                    seed=seed,
                )
                low, high = (float(res.low), float(res.high)) if np.isfinite(res.low) else (None, None)
    return Headline(
        hook,
        None if hook is None else _layer(hook),
        chosen_on,
        value,
        low,
        high,
        len(result.records),
        None if top is None else float(top["auroc"]),
        None if top is None else top["hook"],
    )
