"""The results of the alignment-depth diagnostic (:mod:`geomprobe.steering.depth`): dataclasses whose fields carry
their meanings (the audit's schema reads them), their JSON form and their text table."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _doc(text: str, *, internal: bool = False) -> Any:
    """A field with its meaning in ``metadata["doc"]`` (the audit's schema reads it, see audit/spec.py);
    an ``internal`` one (kept for plots and tests, not written to metrics.json) defaults to None."""
    if internal:
        return field(default=None, repr=False, compare=False, metadata={"doc": text, "internal": True})
    return field(metadata={"doc": text})


def _plain(value: Any) -> Any:
    """Dataclasses to dicts (internal fields left out), numbers to floats or None when not finite."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if not f.metadata.get("internal")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- results ---------------------------------------------------------------------------------------
@dataclass
class ShareAt:
    k: int = _doc("first k response tokens")
    share: float | None = _doc("fraction of the total KL (summed over prompts and positions) in positions 1..k")
    ci_low: float | None = _doc("bootstrap interval over prompts, low")
    ci_high: float | None = _doc("high")


@dataclass
class KLProfile:
    """KL(B || A) along one kind of response, position by position."""

    responses: str = _doc("which responses were teacher-forced: aligned_replies (B's own) or base_answers (A's)")
    n_prompts: int = _doc("prompts (responses) in the profile")
    mean: list[float | None] = _doc("mean KL(B ‖ A) in nats at response positions 1, 2, ... over the prompts that reach it")
    ci_low: list[float | None] = _doc("bootstrap interval of the mean per position, low")
    ci_high: list[float | None] = _doc("high")
    n_at: list[int] = _doc("prompts whose response reaches each position")
    total_mean: float | None = _doc("mean over prompts of the KL summed along the response")
    share_first: list[ShareAt] = _doc("share of the total KL in the first k tokens, k = 1, 2, 5, 10")
    half_kl_tokens: int | None = _doc("smallest k whose first k tokens hold half the total KL (null: no KL)")
    half_ci_low: int | None = _doc("bootstrap interval of half_kl_tokens, low")
    half_ci_high: int | None = _doc("high")
    per_prompt: list[list[float]] = _doc("KL per position, per prompt", internal=True)

    def share(self, k: int) -> float | None:
        return next((s.share for s in self.share_first if s.k == k), None)


@dataclass
class PrefillPoint:
    k: int = _doc("answer tokens prefilled into B's reply")
    rate: float = _doc("judge's refusal rate of B's continuation")
    ci_low: float = _doc("bootstrap interval over prompts, low")
    ci_high: float = _doc("high")
    n: int = _doc("prompts judged")
    n_refused: int = _doc("continuations judged refusals")
    n_clamped: int = _doc("answers shorter than k, prefilled whole (0 unless clamping was asked for)")
    prefills: list[list[int]] = _doc("prefilled token ids per prompt", internal=True)
    continuation_ids: list[list[int]] = _doc("B's continuation token ids per prompt", internal=True)
    continuations: list[str] = _doc("B's continuations", internal=True)
    flags: list[bool] = _doc("per prompt, whether the judge read the continuation as a refusal", internal=True)


@dataclass
class PrefillCurve:
    points: list[PrefillPoint] = _doc("one record per prefill length k, in increasing k")
    auc: float | None = _doc("area under refusal rate vs k over [min k, max k] divided by the range (the rate if one k)")
    auc_ci_low: float | None = _doc("bootstrap interval of auc, low")
    auc_ci_high: float | None = _doc("high")


@dataclass
class DepthResult:
    """Alignment depth of B (aligned) against A (base): KL profiles, prefill curve and the summary numbers."""

    base_id: str = _doc("base checkpoint A")
    aligned_id: str = _doc("aligned checkpoint B")
    n_prompts: int = _doc("harmful prompts given")
    n_used: int = _doc("prompts whose base answer the judge did not flag (used for base_answers and prefill)")
    base_refusal_rate: float = _doc("judge's refusal rate of A's answers")
    aligned_refusal_rate: float = _doc("judge's refusal rate of B's own replies")
    max_tokens: int = _doc("tokens generated per response and per continuation")
    ks: list[int] = _doc("prefill lengths")
    n_bootstrap: int = _doc("bootstrap replicates (prompts resampled)")
    ci_level: float = _doc("interval level")
    seed: int = _doc("bootstrap seed")
    dtype: str = _doc("dtype of the forward passes")
    aligned_replies: KLProfile = _doc("KL(B ‖ A) teacher-forced on B's own greedy replies")
    base_answers: KLProfile = _doc("KL(B ‖ A) teacher-forced on A's greedy answers")
    prefill: PrefillCurve = _doc("the prefilling attack: refusal rate of B's continuation after k answer tokens")
    half_kl_tokens: int | None = _doc("depth summary: aligned_replies.half_kl_tokens")
    prefill_auc: float | None = _doc("depth summary: prefill.auc")
    prompts: list[str] = _doc("the prompts", internal=True)
    aligned_texts: list[str] = _doc("B's replies", internal=True)
    base_texts: list[str] = _doc("A's answers", internal=True)

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        """JSON-ready fields; prompts, responses and continuations only with ``include_text``."""
        out = _plain(self)
        if include_text:
            out["texts"] = {
                "prompts": self.prompts,
                "aligned_replies": self.aligned_texts,
                "base_answers": self.base_texts,
                "continuations": {str(p.k): p.continuations for p in self.prefill.points},
            }
        return out

    def save(self, path: str | Path, include_text: bool = True) -> Path:
        from geomprobe.core.io import write_json

        return write_json(path, self.to_dict(include_text))

    def table(self) -> str:
        """A short text table: the shares of the KL profiles and the prefill curve."""

        def pct(v: float | None) -> str:
            return "   n/a" if v is None else f"{v:6.1%}"

        lines = [
            f"{'KL share in first k':22s}"
            + "".join(f"{'k=' + str(s.k):>8s}" for s in self.aligned_replies.share_first)
            + f"{'half@':>8s}{'total':>9s}"
        ]
        for prof in (self.aligned_replies, self.base_answers):
            lines.append(
                f"{prof.responses:22s}"
                + "".join(f"{pct(s.share):>8s}" for s in prof.share_first)
                + f"{'n/a' if prof.half_kl_tokens is None else prof.half_kl_tokens:>8}"
                + (f"{prof.total_mean:9.3f}" if prof.total_mean is not None else f"{'n/a':>9s}")
            )
        lines.append(f"{'prefill k':>10s} {'refused':>8s} {'interval':>16s} {'n':>4s}")
        for p in self.prefill.points:
            lines.append(f"{p.k:10d} {pct(p.rate):>8s} {pct(p.ci_low) + '-' + pct(p.ci_high).strip():>16s} {p.n:4d}")
        auc = self.prefill
        lines.append(
            f"prefill AUC {'n/a' if auc.auc is None else f'{auc.auc:.3f}'} "
            f"[{'n/a' if auc.auc_ci_low is None else f'{auc.auc_ci_low:.3f}'}, "
            f"{'n/a' if auc.auc_ci_high is None else f'{auc.auc_ci_high:.3f}'}]"
        )
        return "\n".join(lines)
