"""Choose where and how hard to steer: behaviour metrics per (hook, multiplier), and cheap screens.

Behaviour metrics read the next-token distribution at the last prompt position (one forward pass
per prompt batch, no generation), computed from ``log_softmax`` in float64:

``refusal-log-odds``  log-odds that the next token is a refusal token (the *refusal log-odds*;
                ``refusal`` is its old name):
                ``log p(R) - log(1 - p(R))`` with ``p(R) = sum_{t in R} p(t)``. Not the
                judge's *refusal rate* (:mod:`geomprobe.steering.judge`), a share of generations.
``logit-diff``  ``logit[a] - logit[b]`` for two answer tokens (equal to the log-prob difference).
``probe``       a probe direction's score ``w . x`` on the last-token activation at the probe hook.

Side effects: ``KL(base || steered) = sum_t p_base(t) (log p_base(t) - log p_steered(t))`` on
harmless prompts, from log-probabilities (never from probabilities).

Geometric screens need only a cache: per hook, how consistently the pair differences point the
same way, Cohen's d of the classes along the mean-difference direction, and the Jensen-Shannon
divergence between the two classes' 1-D projections on that direction. JS estimator: shared
histogram bins over the pooled projections, ``JS = H(M) - (H(P) + H(Q)) / 2`` with ``M = (P+Q)/2``,
each entropy computed with logs of the bin probabilities (empty bins contribute 0), reported in
bits (0 = same distribution, 1 = disjoint). The direction is fitted on the same rows, so the
screen is optimistic; use it to rank layers, not to report effect sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer, resolve_hooks
from geomprobe.steering.apply import (
    check_multiplier,
    check_multiplier_fits,
    ensure_kv_cache_compat,
    render_prompts,
    steer,
    tokenize_left,
)
from geomprobe.steering.select import LayerRule, LayerSelection, ScreenRow, select_setting
from geomprobe.steering.vectors import SteeringVector, class_masks, paired_differences

METRICS = ("refusal-log-odds", "logit-diff", "probe")
RENAMED_METRICS = {"refusal": "refusal-log-odds"}  # old name -> current name
DEFAULT_REFUSAL_WORDS = ("I", "Sorry", "I'm", "As", "Unfortunately", "No", "Apologies")


# -- metrics on next-token log-probabilities --------------------------------------------------
def canonical_metric(metric: str) -> str:
    """The current name of a search metric; the old name ``refusal`` is accepted with a DeprecationWarning."""
    if metric in RENAMED_METRICS:
        import warnings

        new = RENAMED_METRICS[metric]
        warnings.warn(
            f"metric {metric!r} is now called {new!r} (the next-token refusal log-odds)", DeprecationWarning, stacklevel=3
        )
        return new
    if metric not in METRICS:
        raise GeomprobeError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def refusal_token_ids(tokenizer: Any, words: Sequence[str] = DEFAULT_REFUSAL_WORDS) -> list[int]:
    """First token of each word, with and without a leading space (deduplicated)."""
    ids: list[int] = []
    for word in words:
        for text in (word, " " + word):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if toks and toks[0] not in ids:
                ids.append(int(toks[0]))
    if not ids:
        raise GeomprobeError("no refusal tokens could be encoded; pass --refusal-tokens")
    return ids


def answer_token_id(tokenizer: Any, text: str) -> int:
    toks = tokenizer.encode(text, add_special_tokens=False)
    if len(toks) != 1:
        raise GeomprobeError(f"answer {text!r} is {len(toks)} tokens for this tokenizer; pick answers that are one token each")
    return int(toks[0])


def refusal_log_odds(logprobs: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``log p(R) - log(1 - p(R))`` per row of ``(N, V)`` log-probabilities."""
    ids = torch.as_tensor(list(token_ids), device=logprobs.device)
    log_p = torch.logsumexp(logprobs[:, ids], dim=-1).clamp(max=-1e-12)
    return log_p - torch.log(-torch.expm1(log_p))


def logit_difference(logprobs: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return logprobs[:, a] - logprobs[:, b]


def kl_divergence(base_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(base || other)`` in nats, from log-probabilities."""
    p = base_logprobs.exp()
    return (p * (base_logprobs - other_logprobs)).sum(-1).clamp_min(0.0)


def next_token_logprobs(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    rendered_chat: bool = True,
    capture: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(N, V)`` float64 log-probabilities of the next token after each text (last position),
    plus the last-token activation at ``capture`` (float64, or None)."""
    rows, acts = [], []
    store: dict[str, torch.Tensor] = {}

    def keep(x, hook):
        store["x"] = x[:, -1].detach()
        return x

    for start in range(0, len(texts), batch_size):
        enc = tokenize_left(model, texts[start : start + batch_size], rendered_chat=rendered_chat)
        with torch.no_grad():
            if capture is not None:
                with model.bridge.hooks(fwd_hooks=[(capture, keep)]):
                    logits = model.bridge(enc["input_ids"], attention_mask=enc["attention_mask"])
                acts.append(store["x"].double().cpu())
            else:
                logits = model.bridge(enc["input_ids"], attention_mask=enc["attention_mask"])
        rows.append(torch.log_softmax(logits[:, -1].double(), dim=-1).cpu())
    return torch.cat(rows), (torch.cat(acts) if acts else None)


# -- layer search -----------------------------------------------------------------------------
@dataclass
class SearchRecord:
    hook: str
    layer: int
    multiplier: float | None
    mode: str
    metric: str
    score_mean: float
    score_std: float
    score_delta: float
    kl_mean: float | None
    kl_max: float | None
    n_prompts: int
    n_harmless: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """Scores per (hook, multiplier); ``baseline`` is the unsteered metric mean."""

    records: list[SearchRecord]
    metric: str
    baseline: float
    model_id: str
    n_layers: int
    pooling: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    def select(
        self, kl_limit: float | None = 0.1, max_layer_fraction: float = 0.8, maximize: bool = True
    ) -> tuple[SearchRecord, LayerSelection] | None:
        """The steered record the project's layer rule chooses by the metric alone (no judge), and the
        rule's full outcome; None when nothing was steered. When no record keeps the limits, the rule's
        fallback (the least-KL record) is returned and ``selection.within_limits`` is False."""
        steered = [r for r in self.records if r.multiplier != 0]
        if not steered:
            return None
        rule = LayerRule(kl_limit=kl_limit, max_layer_fraction=max_layer_fraction, judge_candidates=1, maximize=maximize)
        chosen = select_setting([ScreenRow.from_record(r) for r in steered], rule, n_layers=self.n_layers, metric=self.metric)
        record = next(r for r in steered if r.hook == chosen.hook and r.multiplier == chosen.multiplier)
        return record, chosen

    def best(self, kl_limit: float | None = 0.1, max_layer_fraction: float = 0.8, maximize: bool = True) -> SearchRecord | None:
        """Strongest steered record with KL <= ``kl_limit`` outside the last (1 - fraction) of layers,
        by the metric alone; None when no record qualifies: :meth:`select` without its fallbacks
        (``steer search`` applies the full rule, judge included)."""
        picked = self.select(kl_limit, max_layer_fraction, maximize)
        return picked[0] if picked and picked[1].within_limits else None

    def to_dict(self, kl_limit: float | None = 0.1) -> dict[str, Any]:
        best = self.best(kl_limit)
        return {
            "metric": self.metric,
            "baseline": self.baseline,
            "model_id": self.model_id,
            "pooling": self.pooling,
            "vector_method": self.method,
            "dtype": "float64",
            "settings": self.settings,
            "best": best.to_dict() if best else None,
            "records": [r.to_dict() for r in self.records],
        }

    def table(self) -> str:
        width = max(11, len(self.metric))
        lines = [f"{'hook':28s} {'mult':>7s} {self.metric:>{width}s} {'delta':>9s} {'KL':>9s}"]
        for r in self.records:
            mult = "ablate" if r.multiplier is None else f"{r.multiplier:g}"
            kl = "-" if r.kl_mean is None else f"{r.kl_mean:.4f}"
            lines.append(f"{r.hook:28s} {mult:>7s} {r.score_mean:{width}.4f} {r.score_delta:+9.4f} {kl:>9s}")
        return "\n".join(lines)


def _metric_fn(
    model: Any,
    metric: str,
    *,
    refusal_tokens: Sequence[int] | None,
    answer_tokens: Sequence[str | int] | None,
    probe: tuple[str, np.ndarray, float] | None,
) -> tuple[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], str | None, dict[str, Any]]:
    if metric == "refusal-log-odds":
        ids = list(refusal_tokens) if refusal_tokens else refusal_token_ids(model.tokenizer)
        return (lambda lp, act: refusal_log_odds(lp, ids)), None, {"refusal_tokens": ids}
    if metric == "logit-diff":
        if not answer_tokens or len(answer_tokens) != 2:
            raise GeomprobeError("metric logit-diff needs two answer tokens (--answer-tokens A B)")
        a, b = (t if isinstance(t, int) else answer_token_id(model.tokenizer, t) for t in answer_tokens)
        return (lambda lp, act: logit_difference(lp, a, b)), None, {"answer_tokens": [a, b]}
    if metric == "probe":
        if probe is None:
            raise GeomprobeError("metric probe needs a probe (--probe PROBE_DIR)")
        hook, w, bias = probe
        if hook not in set(model.hook_names):
            raise GeomprobeError(f"the model has no hook {hook!r} for the probe")
        w_t = torch.as_tensor(np.asarray(w, dtype=np.float64).reshape(-1))
        if w_t.numel() != model.d_model:
            raise GeomprobeError(f"probe width {w_t.numel()} does not match the model's d_model {model.d_model}")
        return (lambda lp, act: act @ w_t + bias), hook, {"probe_hook": hook}
    raise GeomprobeError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def check_search_settings(
    metric: str,
    mode: str = "add",
    *,
    answer_tokens: Sequence[str | int] | None = None,
    probe: tuple[str, np.ndarray, float] | None = None,
    vector: SteeringVector | None = None,
    multipliers: Sequence[float] = (),
    dtype: str | torch.dtype | None = "float32",
) -> None:
    """Every check of a layer search that needs no model: run it before the model loads."""
    if mode not in ("add", "ablate"):
        raise GeomprobeError(f"unknown mode {mode!r}; use add or ablate")
    metric = RENAMED_METRICS.get(metric, metric)  # the old name is accepted (search_layers warns)
    if metric not in METRICS:
        raise GeomprobeError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if metric == "logit-diff" and (not answer_tokens or len(answer_tokens) != 2):
        raise GeomprobeError("metric logit-diff needs two answer tokens (--answer-tokens A B)")
    if metric == "probe":
        if probe is None:
            raise GeomprobeError("metric probe needs a probe (--probe PROBE_DIR)")
        width = np.asarray(probe[1]).size
        if vector is not None and width != vector.d_model:
            raise GeomprobeError(
                f"probe width {width} does not match the steering vector's d_model {vector.d_model}; "
                "use a probe and a vector from the same model"
            )
    for m in multipliers:
        check_multiplier(m) if vector is None else check_multiplier_fits(vector, m, dtype)


def search_layers(
    model: Any,
    vector: SteeringVector,
    prompts: Sequence[str],
    *,
    harmless_prompts: Sequence[str] | None = None,
    hooks: str | Sequence[str] | None = None,
    multipliers: Sequence[float] = (-8, -4, -2, 2, 4, 8),
    metric: str = "refusal-log-odds",
    mode: str = "add",
    refusal_tokens: Sequence[int] | None = None,
    answer_tokens: Sequence[str | int] | None = None,
    probe: tuple[str, np.ndarray, float] | None = None,
    positions: str = "all",
    chat: bool = True,
    batch_size: int = 8,
) -> SearchResult:
    """Score each hook x multiplier (``mode="add"``) or each hook's direction ablated everywhere
    (``mode="ablate"``) on ``prompts``; KL on ``harmless_prompts`` measures side effects."""
    if not prompts:
        raise GeomprobeError("the layer search needs validation prompts; none given")
    metric = canonical_metric(metric)
    check_search_settings(
        metric, mode, answer_tokens=answer_tokens, probe=probe, vector=vector, multipliers=multipliers, dtype=model.dtype
    )
    if vector.d_model != model.d_model:
        raise GeomprobeError(
            f"steering vector width {vector.d_model} does not match the model's d_model {model.d_model}; "
            "build the vector from this model's activations"
        )
    mults = [check_multiplier(m) for m in multipliers]
    names = vector.hooks if hooks is None else resolve_hooks(hooks, model.n_layers, model.hook_names)
    unknown = [n for n in names if n not in set(model.hook_names)]
    if unknown:
        raise GeomprobeError(f"the model has no hook {unknown[0]!r}; choose hooks with --layers")
    score, capture, extra = _metric_fn(model, metric, refusal_tokens=refusal_tokens, answer_tokens=answer_tokens, probe=probe)
    ensure_kv_cache_compat(model)
    texts = render_prompts(model.tokenizer, prompts, chat)
    harmless = render_prompts(model.tokenizer, harmless_prompts, chat) if harmless_prompts else []
    rendered = chat and bool(getattr(model.tokenizer, "chat_template", None))

    def measure() -> tuple[torch.Tensor, torch.Tensor | None]:
        lp, act = next_token_logprobs(model, texts, batch_size=batch_size, rendered_chat=rendered, capture=capture)
        s = score(lp, act)
        h = next_token_logprobs(model, harmless, batch_size=batch_size, rendered_chat=rendered)[0] if harmless else None
        return s, h

    base_scores, base_harmless = measure()
    baseline = float(base_scores.mean())
    records: list[SearchRecord] = []

    def record(hook: str, mult: float | None, s: torch.Tensor, h: torch.Tensor | None) -> None:
        kl = kl_divergence(base_harmless, h) if h is not None and base_harmless is not None else None
        records.append(
            SearchRecord(
                hook,
                hook_layer(hook),
                mult,
                mode,
                metric,
                float(s.mean()),
                float(s.std(unbiased=False)),
                float(s.mean()) - baseline,
                None if kl is None else float(kl.mean()),
                None if kl is None else float(kl.max()),
                len(texts),
                len(harmless),
            )
        )

    for hook in names:
        if mode == "ablate":
            from geomprobe.steering.ablation import ablate

            with ablate(model, vector.vector_for(hook)):
                s, h = measure()
            record(hook, None, s, h)
            continue
        for mult in mults:
            if mult == 0:
                record(hook, 0.0, base_scores, base_harmless)
                continue
            with steer(model, vector.vector_for(hook), mult, hooks=[hook], positions=positions):
                s, h = measure()
            record(hook, mult, s, h)
    settings = dict(extra, mode=mode, positions=positions, multipliers=mults, hooks=names, chat=chat)
    return SearchResult(records, metric, baseline, model.model_id, model.n_layers, vector.pooling, vector.method, settings)


# -- geometric screens ------------------------------------------------------------------------
def js_divergence_1d(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Jensen-Shannon divergence (bits) between two samples via shared histogram bins."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise GeomprobeError("JS divergence needs samples of both classes")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if hi <= lo:
        return 0.0
    edges = np.linspace(lo, hi, bins + 1)
    p = np.histogram(a, edges)[0].astype(np.float64)
    q = np.histogram(b, edges)[0].astype(np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0  # 0 log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[nz] * (np.log(x[nz]) - np.log(m[nz]))))

    # Clip float rounding: JS in bits lies in [0, 1].
    return min(1.0, max(0.0, (0.5 * kl(p) + 0.5 * kl(q)) / math.log(2.0)))


@dataclass
class ScreenRecord:
    hook: str
    layer: int
    pooling: str
    n_positive: int
    n_negative: int
    n_pairs: int
    mean_cosine: float | None
    sign_agreement: float | None
    cohens_d: float
    js_bits: float
    dtype: str = "float64"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def screen_arrays(
    X: np.ndarray, positive: np.ndarray, negative: np.ndarray, pair_ids: np.ndarray | None, *, bins: int = 32
) -> dict[str, Any]:
    X = np.asarray(X, np.float64)
    if not np.all(np.isfinite(X)):
        bad = int((~np.isfinite(X)).any(axis=1).sum()) if X.ndim == 2 else int((~np.isfinite(X)).sum())
        raise GeomprobeError(f"activations contain NaN or inf in {bad} row(s); recreate the cache (check the model dtype)")
    positive, negative = np.asarray(positive, bool), np.asarray(negative, bool)
    diffs = paired_differences(X, positive, negative, pair_ids)
    mean_diff = diffs.mean(0) if len(diffs) else X[positive].mean(0) - X[negative].mean(0)
    norm = np.linalg.norm(mean_diff)
    unit = mean_diff / norm if norm > 0 else mean_diff
    cos = sign = None
    if len(diffs):
        dn = np.linalg.norm(diffs, axis=1)
        cos = float(np.mean((diffs @ unit) / np.where(dn > 0, dn, 1.0)))
        sign = float(np.mean(diffs @ unit > 0))
    pa, pb = X[positive] @ unit, X[negative] @ unit
    pooled_var = (
        (len(pa) - 1) * pa.var(ddof=1 if len(pa) > 1 else 0) + (len(pb) - 1) * pb.var(ddof=1 if len(pb) > 1 else 0)
    ) / max(len(pa) + len(pb) - 2, 1)
    d = float((pa.mean() - pb.mean()) / math.sqrt(pooled_var)) if pooled_var > 0 else float("inf")
    return {
        "n_positive": int(positive.sum()),
        "n_negative": int(negative.sum()),
        "n_pairs": int(len(diffs)),
        "mean_cosine": cos,
        "sign_agreement": sign,
        "cohens_d": d,
        "js_bits": js_divergence_1d(pa, pb, bins),
    }


def screen_cache(
    path: str,
    *,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    bins: int = 32,
) -> list[ScreenRecord]:
    """Per-hook geometric screen of a cache file (no model needed)."""
    from geomprobe.activations.store import open_cache

    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise GeomprobeError(f"bins must be an integer >= 2, got {bins!r}; pass e.g. bins=32")
    with open_cache(path) as cache:
        names = cache.hooks_for(hooks)
        labels, label_names, pair_ids = cache.labels, cache.label_names, cache.pair_ids
        positive, negative, _ = class_masks(labels, label_names, positive_label)
        if positive.sum() < 2 or negative.sum() < 2:
            raise GeomprobeError(
                f"the screen needs at least 2 rows per class; got {int(positive.sum())} and {int(negative.sum())}"
            )
        pairs = pair_ids if (pair_ids >= 0).any() else None
        out = []
        for hook in names:
            stats = screen_arrays(cache.read(hook, pooling), positive, negative, pairs, bins=bins)
            out.append(ScreenRecord(hook, hook_layer(hook), pooling, **stats))
    return out
