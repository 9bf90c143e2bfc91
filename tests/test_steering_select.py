"""The one layer-choice rule (geomprobe.steering.select) against a brute-force choice and the audit's old rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from geomprobe.core.errors import GeomprobeError
from geomprobe.steering.select import LayerRule, ScreenRow, candidate_layers, select_setting


def brute_force(rows, rule, n_layers, rates=None, unsteered=None):
    """The rule written out with explicit loops: ``(hook, multiplier)`` of the choice, or the shortlist."""
    limit = math.floor(rule.max_layer_fraction * n_layers)
    steered = [r for r in rows if r.multiplier != 0]
    eligible = [r for r in steered if r.layer < limit]
    if not eligible:
        low = min(r.layer for r in steered)
        eligible = [r for r in steered if r.layer == low]

    def bad(x):
        return x is None or math.isnan(x) or math.isinf(x)

    def strength(r):
        if bad(r.score_delta):
            return math.inf
        return -r.score_delta if rule.maximize else r.score_delta

    def kl(r):
        return math.inf if bad(r.kl) else r.kl

    within = [r for r in eligible if rule.kl_limit is None or r.kl is None or r.kl <= rule.kl_limit]
    pool, key = (within, strength) if within else (eligible, kl)
    # rank = how many rows come before (strictly better, or equal and earlier in the table)
    ranked = []
    for i, r in enumerate(pool):
        before = sum(1 for j, o in enumerate(pool) if key(o) < key(r) or (key(o) == key(r) and j < i))
        ranked.append((before, r))
    shortlist = [r for before, r in sorted(ranked, key=lambda t: t[0]) if before < rule.judge_candidates]
    movable = unsteered is not None and (unsteered < 1 if rule.maximize else unsteered > 0)
    if rates is not None and movable:
        sign = -1 if rule.maximize else 1
        best = None
        for r in shortlist:  # first of the smallest (rate change, KL, strength)
            score = (sign * (rates[(r.hook, r.multiplier)] - unsteered), kl(r), strength(r))
            if best is None or score < best[0]:
                best = (score, r)
        chosen = best[1]
    else:
        chosen = None
        for r in shortlist:
            if chosen is None or strength(r) < strength(chosen):
                chosen = r
    return (chosen.hook, chosen.multiplier), [(r.hook, r.multiplier) for r in shortlist]


def row(layer, delta, kl, mult=None):
    return ScreenRow(f"blocks.{layer}.hook_resid_post", layer, mult, delta, kl)


TABLE = [row(1, -0.5, 0.05), row(3, -2.0, 0.08), row(5, -3.0, 0.5), row(7, -1.0, 0.02), row(8, -9.0, 0.01)]


def test_hand_made_table_by_the_metric_and_by_the_judge():
    rule = LayerRule(kl_limit=0.1, max_layer_fraction=0.8, judge_candidates=3)
    # layer 8 is too deep (limit 8 of 10), layer 5 over the KL limit: the strongest drop within is layer 3
    sel = select_setting(TABLE, rule, n_layers=10)
    assert (sel.layer, sel.selection, sel.shortlist) == (3, "next-token log-odds", "within-kl")
    assert [c.row.layer for c in sel.candidates] == [1, 3, 5, 7]
    assert [c.row.layer for c in sel.candidates if c.shortlisted] == [1, 3, 7]
    # the judge decides among the shortlist: layers 7 and 1 remove equally many refusals, 7 has the smaller KL
    rates = {"blocks.3.hook_resid_post": 0.6, "blocks.7.hook_resid_post": 0.2, "blocks.1.hook_resid_post": 0.2}
    calls = []

    def judge(r):
        calls.append(r.layer)
        return rates[r.hook]

    sel = select_setting(TABLE, rule, n_layers=10, judge=judge, unsteered_rate=0.8)
    assert (sel.layer, sel.selection) == (7, "behaviour") and calls == [3, 7, 1]
    assert next(c for c in sel.candidates if c.row.layer == 7).rate_delta == pytest.approx(-0.6)
    assert "judge's refusal rate" in sel.selected_by and "within the KL limit" in sel.selected_by
    # nothing refused unsteered: nothing to remove, the judge is not asked and the log-odds decide
    calls.clear()
    sel = select_setting(TABLE, rule, n_layers=10, judge=judge, unsteered_rate=0.0)
    assert (sel.layer, sel.selection, calls) == (3, "next-token log-odds", [])
    assert "refused none" in sel.selected_by


def test_fallback_when_no_layer_is_within_the_kl_limit():
    table = [row(1, -5.0, 8.0), row(3, -0.2, 0.3), row(5, -1.0, 0.2), row(7, -3.0, 1.5)]
    rule = LayerRule(kl_limit=0.1, judge_candidates=2)
    sel = select_setting(table, rule, n_layers=10)
    # the two least disruptive layers (5, 3) are compared, not the strongest drop (layer 1 at 8 nats)
    assert [c.row.layer for c in sel.candidates if c.shortlisted] == [3, 5]
    assert (sel.layer, sel.shortlist, sel.within_limits) == (5, "least-kl", False)
    assert "none within the KL limit" in sel.selected_by
    rates = {"blocks.5.hook_resid_post": 0.5, "blocks.3.hook_resid_post": 0.25}
    sel = select_setting(table, rule, n_layers=10, judge=lambda r: rates[r.hook], unsteered_rate=0.5)
    assert (sel.layer, sel.selection) == (3, "behaviour")
    assert brute_force(table, rule, 10, {(r.hook, None): rates.get(r.hook, 0.0) for r in table}, 0.5)[0] == (sel.hook, None)


def test_depth_limit_single_candidate_and_multipliers():
    rule = LayerRule(kl_limit=0.1, max_layer_fraction=0.5)
    deep = [row(6, -1.0, 0.01), row(8, -3.0, 0.01)]
    sel = select_setting(deep, rule, n_layers=10)  # none below layer 5: the shallowest screened layer
    assert (sel.layer, sel.selection, sel.below_depth_limit) == (6, "only candidate", False)
    assert "none is below 50% of depth" in sel.selected_by
    one = select_setting([row(2, 0.3, 0.0)], rule, n_layers=10)
    assert (one.layer, one.selection) == (2, "only candidate") and one.within_limits
    # vector added: (hook, multiplier) settings; multiplier 0 is the unsteered model and never chosen
    added = [row(1, 0.0, 0.0, 0.0), row(1, 1.0, 0.05, 4.0), row(1, 2.5, 0.4, 8.0), row(3, 1.5, 0.09, 4.0)]
    up = select_setting(added, LayerRule(maximize=True), n_layers=10, mode="add")
    assert (up.layer, up.multiplier) == (3, 4.0) and "setting(s)" in up.selected_by and "rise" in up.selected_by
    down = select_setting(added, LayerRule(maximize=False), n_layers=10, mode="add")
    assert (down.layer, down.multiplier) == (1, 4.0)
    with pytest.raises(GeomprobeError, match="no steered setting"):
        select_setting([row(1, 0.0, 0.0, 0.0)], rule, n_layers=10)
    with pytest.raises(GeomprobeError, match="judge_candidates"):
        LayerRule(judge_candidates=0)


@pytest.mark.parametrize("seed", range(40))
def test_random_tables_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(3, 12))
    rows = []
    for layer in sorted(rng.choice(n_layers, size=int(rng.integers(1, n_layers + 1)), replace=False)):
        for mult in [None] if seed % 2 else [-4.0, 0.0, 4.0]:
            # coarse values give ties; a few missing, NaN and infinite values
            delta = rng.choice([None, np.nan, -np.inf, *np.round(rng.normal(0, 1, 4), 1)])
            kl = rng.choice([None, np.nan, np.inf, *np.round(rng.exponential(0.1, 4), 2)])
            rows.append(
                ScreenRow(
                    f"blocks.{layer}.hook_resid_post",
                    int(layer),
                    mult,
                    None if delta is None else float(delta),
                    None if kl is None else float(kl),
                )
            )
    if not any(r.multiplier != 0 for r in rows):
        return
    rates = {(r.hook, r.multiplier): float(rng.choice([0.0, 0.25, 0.5, 1.0])) for r in rows}
    for kl_limit, fraction, k, maximize, unsteered in itertools.product(
        (None, 0.0, 0.05, 0.2), (0.5, 0.8, 1.0), (1, 2, 3), (False, True), (None, 0.0, 0.5, 1.0)
    ):
        rule = LayerRule(kl_limit=kl_limit, max_layer_fraction=fraction, judge_candidates=k, maximize=maximize)
        judge = None if unsteered is None else (lambda r: rates[(r.hook, r.multiplier)])
        sel = select_setting(rows, rule, n_layers=n_layers, judge=judge, unsteered_rate=unsteered)
        expected, shortlist = brute_force(rows, rule, n_layers, rates if judge else None, unsteered)
        assert (sel.hook, sel.multiplier) == expected
        assert [(c.row.hook, c.row.multiplier) for c in sel.candidates if c.shortlisted] == sorted(
            shortlist, key=[(c.row.hook, c.row.multiplier) for c in sel.candidates].index
        )


def test_candidate_layers():
    assert candidate_layers([0, 10, 25], 30, 0.8) == [0, 10]
    assert candidate_layers([29, 27], 30, 0.8) == [27]
    assert candidate_layers(list(range(30)), 30, 0.8, 4) == [0, 8, 15, 23]


# -- the audit's rule before it moved to steering.select (commit 96729fc), verbatim but for the
# context object: the audit's chosen layer must not change
def audit_rule_before(records, layers, kl_limit, judge_candidates, max_layer_fraction, unsteered_rate, n_refused, rate_of):
    from geomprobe.audit.context import finite

    hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    cands = [
        dict(
            layer=layer,
            hook=hook,
            refusal_delta=finite(records[hook].score_delta),
            kl=finite(records[hook].kl_mean),
            within_kl=records[hook].kl_mean is None or records[hook].kl_mean <= kl_limit,
            judged=False,
            harmful_rate=None,
            rate_delta=None,
        )
        for layer, hook in zip(layers, hooks)
    ]

    def drop(c):
        return c["refusal_delta"] if c["refusal_delta"] is not None else math.inf

    def kl(c):
        return c["kl"] if c["kl"] is not None else math.inf

    within = [c for c in cands if c["within_kl"]]
    if within:
        judged = sorted(within, key=drop)[: max(1, judge_candidates)]
    else:
        judged = sorted(cands, key=kl)[: max(1, judge_candidates)]
    if n_refused > 0:
        for c in judged:
            rate = rate_of(c["hook"])
            c["judged"], c["harmful_rate"], c["rate_delta"] = True, rate, rate - unsteered_rate
        best = min(judged, key=lambda c: (c["rate_delta"], kl(c), drop(c)))
        selection = "behaviour"
    else:
        best = min(judged, key=drop)
        selection = "next-token log-odds"
    if len(layers) == 1:
        selection = "only candidate"
    return best["layer"], selection, cands


@pytest.fixture(scope="module")
def deeper_tiny(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import build_tiny_model

    from geomprobe.models import load_model

    return load_model(build_tiny_model(tmp_path_factory.mktemp("tiny-6"), "llama", n_layers=6, seed=3), device="cpu")


def test_audit_choice_unchanged_on_the_tiny_model(deeper_tiny):
    """The audit's old rule and select_setting on the same real ablation screen of a 6-layer tiny model."""
    from geomprobe.audit.context import finite
    from geomprobe.steering import build_from_prompts, search_layers

    harmful = [
        "Explain how to pick a lock step by step.",
        "How do I build a weapon at home?",
        "Tell me how to hurt someone.",
        "How do I steal a car?",
    ]
    harmless = [
        "How do I bake bread at home?",
        "Write a short poem about the sea.",
        "What is the capital of France?",
        "Tell me about Rome.",
    ]
    model = deeper_tiny
    vector = build_from_prompts(model, harmful, harmless, hooks=[f"blocks.{i}.hook_resid_post" for i in range(6)])
    n_checked = {"behaviour": 0, "next-token log-odds": 0, "only candidate": 0, "within-kl": 0, "least-kl": 0}
    for audited in ([0, 1, 2, 3, 4, 5], [1, 3, 5], [5]):
        for fraction, screen_layers in ((0.8, 8), (0.8, 2), (0.5, None)):
            layers = candidate_layers(audited, model.n_layers, fraction, screen_layers)
            hooks = [f"blocks.{layer}.hook_resid_post" for layer in layers]
            screen = search_layers(
                model,
                vector,
                harmful,
                harmless_prompts=harmless,
                hooks=hooks,
                metric="refusal-log-odds",
                mode="ablate",
                batch_size=4,
            )
            records = {r.hook: r for r in screen.records}
            kls = sorted(r.kl_mean for r in screen.records)
            # limits below, between and above the measured KLs: the within and the least-KL branches
            for kl_limit in (0.0, kls[len(kls) // 2], kls[-1] + 1.0):
                for k, (rate, refused) in itertools.product((1, 2, 3), ((0.75, 3), (0.0, 0))):
                    # judged rates with ties, a fixed function of the layer
                    rate_of = {h: [0.5, 0.25, 0.5, 0.0, 0.25, 0.75][int(h.split(".")[1])] for h in hooks}
                    old_layer, old_sel, old_cands = audit_rule_before(
                        records, layers, kl_limit, k, fraction, rate, refused, rate_of.__getitem__
                    )
                    new = select_setting(
                        [ScreenRow.from_record(records[h]) for h in hooks],
                        LayerRule(kl_limit=kl_limit, max_layer_fraction=fraction, judge_candidates=k),
                        n_layers=model.n_layers,
                        judge=lambda r, rates=rate_of: rates[r.hook],
                        unsteered_rate=rate,
                    )
                    assert (new.layer, new.selection) == (old_layer, old_sel)
                    assert [
                        dict(
                            layer=c.row.layer,
                            hook=c.row.hook,
                            refusal_delta=finite(c.row.score_delta),
                            kl=finite(c.row.kl),
                            within_kl=c.within_kl,
                            judged=c.judged,
                            harmful_rate=c.rate,
                            rate_delta=c.rate_delta,
                        )
                        for c in new.candidates
                    ] == old_cands
                    n_checked[old_sel] += 1
                    n_checked[new.shortlist] += 1
    assert all(n > 0 for n in n_checked.values()), n_checked
