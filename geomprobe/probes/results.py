"""What the probe stage returns: typed results with ``to_dict()``, and the per-layer metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.probes.metrics import (
    accuracy,
    auroc,
    balanced_accuracy,
    calibration_error,
    control_threshold,
    recall_at_threshold,
)


@dataclass
class LayerMetrics:
    """Held-out metrics of the probe at one hook (scores in float64)."""

    hook: str
    layer: int  # -1 for a hook outside the blocks
    pooling: str
    method: str
    dtype: str
    n_eval: int
    n_positive: int
    n_negative: int
    auroc: float
    accuracy: float
    balanced_accuracy: float
    fpr: float  # the false-positive rate the threshold is set for
    threshold: float
    threshold_source: str  # control | test-negatives (tuned on the evaluated negatives: optimistic) | none
    recall_at_fpr: float
    negative_fpr_at_threshold: float
    calibration_error: float
    eval_rows: str | None = None  # evaluate_probes only: "all" or "held-out"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if record["eval_rows"] is None:  # training records never had the key
            del record["eval_rows"]
        return record


def layer_metrics(
    hooks: Sequence[str],
    scores: np.ndarray,
    y: np.ndarray,
    *,
    pooling: str,
    method: str,
    control: np.ndarray | None = None,
    fpr: float = 0.01,
) -> list[LayerMetrics]:
    """Metrics per hook for scores ``(L, N)``; threshold from ``control`` (L, M) or the negatives."""
    y = np.asarray(y).astype(bool)
    if control is not None:
        threshold, source = np.asarray(control_threshold(control, fpr)), "control"
    elif (~y).any():
        threshold, source = np.asarray(control_threshold(scores[:, ~y], fpr)), "test-negatives"
    else:
        threshold, source = np.full(len(hooks), np.nan), "none"
    # (L, N) scores give (L,) arrays
    aucs = np.asarray(auroc(scores, y))
    acc, bacc = np.asarray(accuracy(scores, y)), np.asarray(balanced_accuracy(scores, y))
    recall = np.asarray(recall_at_threshold(scores, y, threshold))
    ece = np.asarray(calibration_error(scores, y))
    neg_fpr = (scores[:, ~y] > threshold[:, None]).mean(1) if (~y).any() else np.full(len(hooks), np.nan)
    out = []
    for i, hook in enumerate(hooks):
        try:
            layer = hook_layer(hook)
        except GeomprobeError:
            layer = -1
        out.append(
            LayerMetrics(
                hook=hook,
                layer=layer,
                pooling=pooling,
                method=method,
                dtype="float64",
                n_eval=int(len(y)),
                n_positive=int(y.sum()),
                n_negative=int((~y).sum()),
                auroc=float(aucs[i]),
                accuracy=float(acc[i]),
                balanced_accuracy=float(bacc[i]),
                fpr=float(fpr),
                threshold=float(threshold[i]),
                threshold_source=source,
                recall_at_fpr=float(recall[i]),
                negative_fpr_at_threshold=float(neg_fpr[i]),
                calibration_error=float(ece[i]),
            )
        )
    return out


def layer_records(
    hooks: Sequence[str],
    scores: np.ndarray,
    y: np.ndarray,
    *,
    pooling: str,
    method: str,
    control: np.ndarray | None = None,
    fpr: float = 0.01,
) -> list[dict[str, Any]]:
    """:func:`layer_metrics` as plain dicts (the form saved in probe.json and reports)."""
    return [m.to_dict() for m in layer_metrics(hooks, scores, y, pooling=pooling, method=method, control=control, fpr=fpr)]


@dataclass
class ProbeResult:
    """Per-layer metrics plus the scores they came from."""

    layers: list[LayerMetrics]
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # hook -> (n_eval,)
    y: np.ndarray | None = None  # (n_eval,) 1 = positive
    control_scores: dict[str, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rows: np.ndarray | None = None  # (n_eval,) cache row of each score

    @property
    def records(self) -> list[dict[str, Any]]:
        """The per-layer metrics as plain dicts, one per hook."""
        return [m.to_dict() for m in self.layers]

    def best(self, key: str = "auroc") -> dict[str, Any]:
        """The record of the hook with the highest finite ``key``."""
        valid = [r for r in self.records if r.get(key) is not None and np.isfinite(r[key])]
        if not valid:
            raise GeomprobeError(f"no layer has a finite {key}")
        return max(valid, key=lambda r: r[key])

    def to_dict(self) -> dict[str, Any]:
        """Metrics and provenance (the per-row scores stay in :attr:`scores`)."""
        return {"info": dict(self.info), "per_layer": self.records}


@dataclass
class TransferResult:
    """``auroc[i, j, l]``: probe trained on cache i, evaluated on cache j, at hook l."""

    names: list[str]
    hooks: list[str]
    auroc: np.ndarray
    recall: np.ndarray
    model_ids: list[str]

    def records(self) -> list[dict[str, Any]]:
        """One dict per (train cache, eval cache, hook); ``held_out`` on the diagonal."""
        out = []
        for i, train in enumerate(self.names):
            for j, test in enumerate(self.names):
                for k, hook in enumerate(self.hooks):
                    out.append(
                        {
                            "train": train,
                            "eval": test,
                            "hook": hook,
                            "layer": hook_layer(hook),
                            "auroc": float(self.auroc[i, j, k]),
                            "recall_at_fpr": float(self.recall[i, j, k]),
                            "held_out": i == j,
                        }
                    )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "hooks": list(self.hooks),
            "model_ids": list(self.model_ids),
            "records": self.records(),
        }


@dataclass
class TokenScores:
    """Per-token probe scores of one prompt: ``scores`` cover every token, the response is
    ``[response_start, response_end)`` (the span mean pooling averages; the chat template's closing
    tokens after it are scored but not part of the response)."""

    row: int
    token_ids: np.ndarray
    scores: np.ndarray
    response_start: int
    label: str
    response_end: int | None = None  # None: to the last token

    @property
    def response_mean(self) -> float:
        part = self.scores[self.response_start : self.response_end]
        return float(part.mean()) if len(part) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "label": self.label,
            "response_start": self.response_start,
            "response_end": len(self.scores) if self.response_end is None else self.response_end,
            "token_ids": [int(t) for t in self.token_ids],
            "scores": [float(s) for s in self.scores],
            "response_mean": self.response_mean,
        }
