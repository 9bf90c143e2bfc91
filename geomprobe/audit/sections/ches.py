"""CHES section: which preference pairs would displace likelihood if the audited checkpoint were trained on them by DPO.

CHES and its length-normalised variant (Razin et al., ICLR 2025, Definition 2; ``docs/ches.md``)
of every pair of the bundled ``preferences`` set (or the ``--preferences`` file), computed by
:func:`geomprobe.ches.ches_scores` on the audited checkpoint's own forward pass: the states that
predict each response token (end-of-turn included), summed; sums and inner products in float64.
The pairs are ranked at the ``final`` layer (after the final norm: the unembedding's input, the
paper's layer) and the top share is flagged; the same scores at every audited block output
(``resid_post``) say how far the ranking holds through depth (Spearman against ``final``).

With ``--against`` the same pairs are scored on b; ``compare`` gives the mean change over pairs
with a paired bootstrap interval (the same pair indices for both checkpoints, drawn by
:mod:`geomprobe.core.stats`), the Spearman agreement of the two rankings and the share of a's
flagged pairs b flags too. Raw CHES scales with the hidden states' norm, so a change of its mean
mixes in any change of that norm; the rank agreement is free of it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, finite, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.ches_report import report_block, summary_line, summary_rows
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import FigureRef, ReportBlock
from geomprobe.core import stats
from geomprobe.core.errors import GeomprobeError

SCORE_NAMES = ("ches", "ln_ches")
UNLABELLED = "unlabelled"  # the kind of a pair whose row has no `kind` key


@dataclass(frozen=True)
class ChesSizes:
    n_pairs: int | None = size(None, 12, doc="preference pairs scored, spread evenly over the file (None: all)")
    # The paper filters refusal data by LN-CHES (its Section 6): raw CHES mostly ranks by length there.
    rank_by: str = size("ln_ches", doc="score that ranks and flags the pairs (`ches` or `ln_ches`)")
    top_share: float = size(0.33, doc="share of pairs flagged: the top ceil(share * n) by `rank_by`")
    n_top: int = size(10, 5, doc="highest-ranked pairs listed by index")
    n_bootstrap: int = size(1000, 200, doc="paired bootstrap replicates over pairs of the change against b")

    def __post_init__(self) -> None:
        if self.rank_by not in SCORE_NAMES:
            raise GeomprobeError(f"audit ches sizes: rank_by must be one of {', '.join(SCORE_NAMES)}; got {self.rank_by!r}")
        if (self.n_pairs is not None and self.n_pairs < 1) or self.n_top < 1 or self.n_bootstrap < 0:
            raise GeomprobeError(f"audit ches sizes need n_pairs >= 1 (or None), n_top >= 1 and n_bootstrap >= 0; got {self}")
        if not 0 < self.top_share <= 1:
            raise GeomprobeError(f"audit ches sizes: top_share must be in (0, 1]; got {self.top_share}")


@dataclass
class ChesSettings:
    preferences: str = doc("preference set: `preferences` (bundled) or the `--preferences` file's full path")
    n_pairs: int | None = doc("pairs scored at most, spread evenly over the file (null: all)")
    rank_by: str = doc("score that ranks and flags the pairs")
    top_share: float = doc("share of pairs flagged (the top ceil(share * n))")
    include_end: bool = doc("the state predicting the end of the response is summed too")
    chat_template: bool = doc("prompt and response rendered as a user and an assistant turn (when the model has a template)")
    n_bootstrap: int = doc("paired bootstrap replicates over pairs (with --against)")
    ci_level: float = doc("interval level")


@dataclass
class ScoreSummary:
    """One score's distribution over the pairs."""

    mean: float | None = doc("mean over pairs")
    std: float | None = doc("standard deviation over pairs (population)")
    min: float | None = doc("smallest")
    q25: float | None = doc("first quartile (numpy's linear rule)")
    median: float | None = doc("median")
    q75: float | None = doc("third quartile")
    max: float | None = doc("largest")


@dataclass
class ChesPair:
    index: int = doc("row of the pair in the preference file (0-based; `geomprobe ches`'s index when all pairs are scored)")
    kind: str = doc(f"the row's `kind` (bundled set: compliance or near-duplicate; `{UNLABELLED}` without one)")
    ches: float | None = doc("CHES at the ranking layer")
    ln_ches: float | None = doc("length-normalised CHES at the ranking layer")
    n_chosen_terms: int = doc("states summed for the chosen response")
    n_rejected_terms: int = doc("states summed for the rejected response")
    rank: int = doc("rank by `rank_by` (1 = highest; ties keep file order)")
    flagged: bool = doc("in the top share")


@dataclass
class ChesKind:
    n: int = doc("pairs of this kind")
    n_flagged: int = doc("of them flagged")
    median_ches: float | None = doc("median CHES")
    median_ln_ches: float | None = doc("median LN-CHES")


@dataclass
class ChesLayer:
    layer: int = doc("block index")
    hook: str = doc("hook read (`blocks.{l}.hook_resid_post`, before any final norm)")
    median_ches: float | None = doc("median CHES over pairs at this layer")
    median_ln_ches: float | None = doc("median LN-CHES over pairs at this layer")
    spearman: float | None = doc("Spearman correlation of this layer's `rank_by` scores with the ranking layer's")
    flagged_agreement: float | None = doc("share of the ranking layer's flagged pairs this layer flags too")


@dataclass
class ChesResult:
    """metrics.json ``ches``."""

    dataset: str = doc("preference set name (`preferences` or the file's stem)")
    dataset_sha256: str = doc("SHA-256 of the preference file")
    n_pairs: int = doc("pairs scored")
    layer: str = doc("layer of every per-pair number and the ranking (`final`: after the final norm, as in the paper)")
    hook: str = doc("its hook (`ln_final.hook_out`)")
    pooling: str = doc("how states become one vector per response")
    dtype: str = doc("dtype of the sums and inner products (float64)")
    model_dtype: str = doc("dtype of the forward passes")
    chat_template_applied: bool = doc("the model's chat template rendered the pairs")
    rank_by: str = doc("score that ranks and flags the pairs")
    top_share: float = doc("share of pairs flagged")
    n_flagged: int = doc("pairs flagged: ceil(top_share * n_pairs)")
    share_flagged: float = doc("n_flagged / n_pairs")
    ches: ScoreSummary = doc("CHES over the pairs: < sum h+, sum h- > - || sum h+ ||^2")
    ln_ches: ScoreSummary = doc("LN-CHES over the pairs: the same with each sum divided by its number of terms")
    top_pairs: list[int] = doc("`index` of the `n_top` highest-ranked pairs, highest first")
    by_kind: dict[str, ChesKind] = doc("pairs per `kind`", items=("count, flagged and medians of one kind",))
    pairs: list[ChesPair] = doc("every scored pair, in file order")
    per_layer: list[ChesLayer] = doc("the same pairs at each audited block output")
    scores: Any = internal()  # the geomprobe.ches.CHESResult (every layer), for compare and the plot
    flags: Any = internal()  # (n_pairs,) bool: flagged at the ranking layer
    seed: int = internal(0)
    n_bootstrap: int = internal(0)


@dataclass
class ScoreChange:
    """One score's mean over the same pairs on a and b, its paired change, and the rank agreement."""

    a: float | None = doc("mean over pairs on the audited checkpoint a")
    b: float | None = doc("mean over pairs on the --against checkpoint b")
    delta: float | None = doc("b - a")
    ci_low: float | None = doc("paired-bootstrap interval of the delta, low", type="number|null")
    ci_high: float | None = doc("high", type="number|null")
    p_value: float | None = doc("two-sided paired-bootstrap p-value of no change", type="number|null")
    spearman: float | None = doc("Spearman correlation of a's and b's per-pair scores (rank agreement)")
    per_pair_delta: list[float | None] = doc("b - a per pair, in `ches.pairs` order")


@dataclass
class ChesComparison:
    layer: str = doc("layer compared (the ranking layer)")
    rank_by: str = doc("score that ranks and flags the pairs")
    n_pairs: int = doc("pairs scored on both checkpoints (resampled as whole pairs)")
    n_bootstrap: int = doc("paired bootstrap replicates")
    ci_level: float = doc("interval level")
    ches: ScoreChange = doc("CHES")
    ln_ches: ScoreChange = doc("LN-CHES")
    flagged_overlap: float | None = doc("share of a's flagged pairs that b flags too (both flag the same number)")


def summarize(values: np.ndarray) -> ScoreSummary:
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return ScoreSummary(*(finite(v) for v in (values.mean(), values.std(), values.min(), q25, median, q75, values.max())))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho (scipy), None when it is undefined (fewer than two pairs, or a constant side)."""
    from scipy.stats import spearmanr

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return finite(spearmanr(x, y).statistic)


def summarize_ches(scores: Any, rows: list[int], sizes: ChesSizes, seed: int) -> ChesResult:
    """The section's record of a :class:`geomprobe.ches.CHESResult` whose first layer ranks the pairs.

    ``rows``: each scored pair's row in the preference file.
    """
    by = sizes.rank_by
    ranked = scores.scores(by)
    flags = scores.flag_top(sizes.top_share, by)
    order = scores.rank(by)
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(1, len(order) + 1)
    kinds = [str((source or {}).get("kind") or UNLABELLED) for source in (scores.sources or [{}] * len(order))]
    pairs = [
        ChesPair(
            rows[i],
            kinds[i],
            finite(scores.ches[0, i]),
            finite(scores.ln_ches[0, i]),
            int(scores.n_chosen[i]),
            int(scores.n_rejected[i]),
            int(rank_of[i]),
            bool(flags[i]),
        )
        for i in range(len(order))
    ]
    by_kind = {}
    for kind in Counter(kinds):
        members = np.array([k == kind for k in kinds])
        by_kind[kind] = ChesKind(
            int(members.sum()),
            int(flags[members].sum()),
            finite(np.median(scores.ches[0, members])),
            finite(np.median(scores.ln_ches[0, members])),
        )
    per_layer = []
    for j in range(1, len(scores.layers)):
        layer_flags = scores.flag_top(sizes.top_share, by, scores.layers[j])
        per_layer.append(
            ChesLayer(
                int(scores.layers[j]),
                scores.hooks[j],
                finite(np.median(scores.ches[j])),
                finite(np.median(scores.ln_ches[j])),
                spearman(ranked, scores.scores(by, scores.layers[j])),
                finite((layer_flags & flags).sum() / flags.sum()),
            )
        )
    return ChesResult(
        dataset=scores.dataset,
        dataset_sha256=scores.dataset_sha256,
        n_pairs=len(order),
        layer=scores.layers[0],
        hook=scores.hooks[0],
        pooling="sum over the states that predict each response token (end-of-turn included)",
        dtype=scores.math_dtype,
        model_dtype=scores.model_dtype,
        chat_template_applied=scores.chat_template_applied,
        rank_by=by,
        top_share=float(sizes.top_share),
        n_flagged=int(flags.sum()),
        share_flagged=float(flags.sum() / len(order)),
        ches=summarize(scores.ches[0]),
        ln_ches=summarize(scores.ln_ches[0]),
        top_pairs=[rows[i] for i in order[: sizes.n_top]],
        by_kind=by_kind,
        pairs=pairs,
        per_layer=per_layer,
        scores=scores,
        flags=flags,
        seed=seed,
        n_bootstrap=sizes.n_bootstrap,
    )


def score_change(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int) -> ScoreChange:
    """Mean over pairs on a and b, b - a with a paired bootstrap over pairs, and the rank agreement."""
    ch = stats.paired_bootstrap(
        lambda rows: (float(a[rows].mean()), float(b[rows].mean())), len(a), n_bootstrap=n_bootstrap, seed=seed
    )
    return ScoreChange(
        finite(ch.a),
        finite(ch.b),
        finite(ch.delta),
        finite(ch.low),
        finite(ch.high),
        finite(ch.p_value),
        spearman(a, b),
        [finite(v) for v in b - a],
    )


def compare_ches(a: ChesResult, b: ChesResult) -> ChesComparison:
    """b's scores of the same pairs against a's (the pairs and the ranking layer must match)."""
    if (a.dataset_sha256, [p.index for p in a.pairs], a.layer) != (b.dataset_sha256, [p.index for p in b.pairs], b.layer):
        raise GeomprobeError("the two checkpoints' CHES sections scored different pairs or layers; rerun the audit")
    changes = {
        name: score_change(getattr(a.scores, name)[0], getattr(b.scores, name)[0], a.n_bootstrap, a.seed) for name in SCORE_NAMES
    }
    n_flagged = int(a.flags.sum())
    return ChesComparison(
        a.layer,
        a.rank_by,
        a.n_pairs,
        a.n_bootstrap,
        0.95,
        changes["ches"],
        changes["ln_ches"],
        finite((a.flags & b.flags).sum() / n_flagged) if n_flagged else None,
    )


def preference_rows(source: str, limit: int | None) -> tuple[Any, list[int]]:
    """The preference set to score (at most ``limit`` pairs spread evenly) and each pair's row in the file."""
    from geomprobe.ches import load_preferences

    every = load_preferences(source)
    chosen = every.subset(limit)
    row_of = {id(pair): i for i, pair in enumerate(every.pairs)}
    return chosen, [row_of[id(pair)] for pair in chosen.pairs]


class ChesSection(AuditSection):
    name = "ches"
    title = "CHES: preference pairs likely to displace likelihood under DPO"
    description = "CHES and LN-CHES (Razin et al. 2025) of each preference pair under the checkpoint, ranked; see docs/ches.md"
    Sizes = ChesSizes
    result_type = ChesResult
    settings_key = "ches"
    settings_type = ChesSettings
    settings_doc = "CHES settings"
    comparison_type = ChesComparison
    comparison_doc = "CHES of the same pairs on both checkpoints: paired change of the mean and rank agreement"
    figure_keys = ("ches",)

    def run(self, ctx: AuditContext) -> ChesResult:
        from geomprobe.ches import FINAL, ches_scores

        sizes = ctx.sizes.ches
        prefs, rows = preference_rows(ctx.options.preferences or "preferences", sizes.n_pairs)
        message = (
            "CHES of the same preference pairs on the --against model"
            if ctx.is_against
            else f"CHES of {len(prefs)} preference pairs ({prefs.name}) at final and {len(ctx.layers)} layers"
        )
        scores = ctx.clock.run(
            "ches",
            message,
            lambda: ches_scores(ctx.model, prefs, layers=[FINAL, *ctx.layers], batch_size=ctx.options.batch_size),
        )
        return summarize_ches(scores, rows, sizes, ctx.options.seed)

    def settings(self, ctx: AuditContext) -> ChesSettings:
        sizes = ctx.sizes.ches
        source = ctx.options.preferences or "preferences"
        return ChesSettings(source, sizes.n_pairs, sizes.rank_by, float(sizes.top_share), True, True, sizes.n_bootstrap, 0.95)

    def compare(self, a: ChesResult, b: ChesResult) -> ChesComparison:
        return compare_ches(a, b)

    def figures(self, ctx: AuditContext, result: ChesResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.ches import plot_ches

        compared = (metrics.get("comparison") or {}).get("ches")
        return [
            ctx.save_figure(
                "ches",
                self.name,
                "CHES of the preference pairs: ranking and depth",
                plot_ches(metrics["ches"], compared, title=f"CHES of preference pairs under {ctx.short_model_id}"),
                f"left: each pair's {result.rank_by} at the {result.layer} layer, highest first (flagged ones filled); "
                "middle: rank agreement of each block output with it"
                + ("; right: the same pairs on b against a" if compared else ""),
            )
        ]

    def summary_line(self, metrics: dict[str, Any]) -> str:
        return summary_line(metrics)

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        return summary_rows(metrics)

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        return report_block(self.name, self.title, metrics)
