"""Headline numbers are chosen on rows disjoint from the rows they are read on.

Each test plants a layer that is the best on the evaluated rows but not on the selection data (the
validation split carved from the training rows, or the honesty held-out split), and checks that the
headline is read at the layer the selection data picks, while the planted maximum is only shown
labelled as a maximum over layers.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from sklearn.metrics import roc_auc_score
from test_probe_eval import HOOKS

from geomprobe.activations.store import write_cache
from geomprobe.audit.context import as_metrics
from geomprobe.audit.sections.deception import ConditionAuroc, DeceptionCheck, deception_headline, deception_table
from geomprobe.audit.sections.probes import ProbeLayer, ProbesSection, ProbesSizes, honesty_layer, train_all
from geomprobe.audit.tables import fmt
from geomprobe.cli import main
from geomprobe.probes import train_probes
from geomprobe.probes.conditions import condition_metrics
from geomprobe.probes.selection import VALIDATION_SIZE
from geomprobe.probes.splits import pair_train_test_split

D, N_PAIRS, TEST_SIZE = 16, 120, 0.25


def planted(path, shifts, seed=0, pooling="last"):
    """A paired honesty cache; ``shifts(layer, rows) -> (N,) shift`` of the dishonest rows along one direction.

    Returns the path and the training, validation and held-out rows that train_probes will use."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], N_PAIRS)
    pairs = np.repeat(np.arange(N_PAIRS), 2)
    train, test = pair_train_test_split(y, pairs, test_size=TEST_SIZE, seed=0)
    fit, val = pair_train_test_split(y[train], pairs[train], test_size=VALIDATION_SIZE, seed=0)
    rows = {"fit": train[fit], "val": train[val], "test": test}
    u = np.zeros(D)
    u[0] = 1.0
    acts = {
        hook: (rng.normal(size=(len(y), D)) + (shifts(layer, rows) * y)[:, None] * u).astype(np.float32)
        for layer, hook in enumerate(HOOKS)
    }
    write_cache(path, acts, y, ["honest", "dishonest"], pair_ids=pairs, attrs={"model_id": "tiny/model"}, pooling=pooling)
    return path, rows, acts, y


def control_cache(path, pooling):
    rng = np.random.default_rng(5)
    acts = {h: rng.normal(size=(100, D)).astype(np.float32) for h in HOOKS}
    write_cache(path, acts, np.zeros(100, dtype=int), ["control"], attrs={"model_id": "tiny/model"}, pooling=pooling)
    return path


def lucky_layer_2(layer, rows):
    """Layer 1: a moderate signal everywhere. Layer 2: a strong one on the fitting and held-out rows but
    reversed on the validation rows, so it wins on the held-out rows and loses on the validation split."""
    shift = np.zeros(2 * N_PAIRS)
    if layer == 1:
        shift[:] = 1.0
    elif layer == 2:
        shift[rows["fit"]] = shift[rows["test"]] = 4.0
        shift[rows["val"]] = -1.5
    return shift


def test_probe_headline_is_chosen_on_the_validation_split(tmp_path):
    cache, rows, acts, y = planted(tmp_path / "honesty.h5", lucky_layer_2, pooling="mean")  # the audit reads mean
    control = control_cache(tmp_path / "control.h5", "mean")
    probes, result = train_probes(cache, "mean-diff", pooling="mean", test_size=TEST_SIZE, seed=0, control=control)
    # the recorded validation AUROC is the mean-difference direction of the fitting rows on the validation rows
    for k, hook in enumerate(HOOKS):
        X = acts[hook].astype(np.float64)
        w = X[rows["fit"]][y[rows["fit"]] == 1].mean(0) - X[rows["fit"]][y[rows["fit"]] == 0].mean(0)
        want = roc_auc_score(y[rows["val"]], X[rows["val"]] @ w)
        assert abs(probes.meta["selection"]["validation_auroc"][k] - want) < 1e-9
    assert probes.meta["selection"]["hook"] == HOOKS[1]
    assert result.best()["hook"] == HOOKS[2]  # the planted layer is the maximum on the held-out rows

    # the audit's probe section on the same cache: headline at layer 1, the maximum only labelled
    sizes = ProbesSizes(methods=("logistic", "mean-diff"), headline_bootstrap=200)
    ctx = SimpleNamespace(
        sizes=SimpleNamespace(probes=sizes),
        caches={"honesty": cache, "control": control},
        hooks=HOOKS,
        options=SimpleNamespace(seed=0, device="cpu"),
    )
    res = train_all(ctx)
    assert res.best.layer == 2 and res.headline is not None
    head = res.headline
    assert head.layer == 1 and head.chosen_on == "validation split of the training rows" and head.n_candidates == 6
    scores = res.trained[head.method][1].scores[HOOKS[1]]
    test_y = y[res.trained[head.method][1].rows]
    assert abs(head.auroc - roc_auc_score(test_y, scores)) < 1e-12
    assert head.auroc_ci_low <= head.auroc <= head.auroc_ci_high and head.n_test == len(rows["test"])
    assert head.auroc < res.best.auroc
    metrics = {"probes": res.to_dict()}
    section = ProbesSection()
    line = section.summary_line(metrics)
    assert line.startswith(f"probe AUROC {fmt(head.auroc)} [") and "layer 1," in line and fmt(res.best.auroc) not in line
    summary = section.summary_rows(metrics)
    assert summary[0][0].startswith("probe AUROC, held-out") and fmt(head.auroc) in summary[0][1]
    assert summary[1][0] == "max held-out probe AUROC over 6 (method, layer) pairs" and "optimistic" in summary[1][1]
    table = section.report(metrics).tables[0]
    assert sum("(headline)" in cell for row in table.rows for cell in row) == 1
    assert "(headline)" in table.rows[1][1 + list(sizes.methods).index(head.method)]


def test_deception_headline_is_read_at_the_honesty_layer():
    # honesty held-out AUROC peaks at layer 1; on the model's own answers layer 2 is the best by far
    per_layer = [ProbeLayer(k, h, "logistic", a, 0.5, 0.7, 0.0, 40) for k, (h, a) in enumerate(zip(HOOKS, [0.6, 0.9, 0.7]))]
    assert honesty_layer(per_layer, "logistic") == (1, HOOKS[1])
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(9), np.zeros(31)].astype(int)
    conds = np.array(["neutral", "lie-pressure"] * 20, dtype=object)
    scores = rng.normal(size=(3, 40))
    scores[2] += 2.0 * y  # the planted layer
    report = condition_metrics(HOOKS, scores, y, conds, n_bootstrap=100, seed=0)
    per = [
        ConditionAuroc(
            r["layer"],
            r["hook"],
            r["condition"],
            r["n_positive"],
            r["n_negative"],
            r["computable"],
            r["auroc"],
            r["auroc_ci_low"],
            r["auroc_ci_high"],
            r["recall_at_fpr"],
        )
        for r in report["per_condition"]
    ]
    pooled = {r.layer: r for r in per if r.condition == "pooled"}
    assert max(pooled, key=lambda k: pooled[k].auroc) == 2
    head = deception_headline(per, *honesty_layer(per_layer, "logistic"))
    assert head is not None and head.layer == 1 and head.chosen_on == "honesty held-out split"
    assert abs(head.pooled_auroc - roc_auc_score(y, scores[1])) < 1e-12 and head.n_layers == 3
    assert {r.condition for r in head.per_condition} == {"pooled", "neutral", "lie-pressure"}
    check = DeceptionCheck("built", "computed", "logistic", "control", 20, 8, {}, list(report["computable"]), per, head)
    d = as_metrics(check)
    best = {"layer": 1, "hook": HOOKS[1], "method": "logistic", "auroc": 0.9, "recall_at_fpr": 0.5, "n_candidates": 3}
    rows = ProbesSection().summary_rows({"probes": {"best": best, "fpr": 0.01, "deception": d}})
    lies = next(v for k, v in rows if k == "probe on the model's own lies")
    assert lies.startswith(
        f"at layer 1 (chosen on the honesty held-out split): pooled {fmt(pooled[1].auroc)} "
        f"[{fmt(pooled[1].auroc_ci_low)}, {fmt(pooled[1].auroc_ci_high)}] (9 false / 31 true)"
    )
    # the planted maximum appears only labelled as one
    assert f"max over 3 layers: pooled {fmt(pooled[2].auroc)} (layer 2; chosen on these answers: optimistic" in lies
    assert lies.index(fmt(pooled[1].auroc)) < lies.index(fmt(pooled[2].auroc))
    table = deception_table(d)
    assert table.rows[1][0] == "1 (headline)" and "maximum over layers" in table.note


def test_probe_eval_prints_the_layer_chosen_on_training_rows(tmp_path, capsys):
    # Training cache: layer 1 carries the signal, layer 2 a weak one. Evaluated cache: layer 2 is best there.
    train, _, _, _ = planted(tmp_path / "train.h5", lambda layer, rows: np.full(2 * N_PAIRS, [0.0, 3.0, 0.8][layer]))
    other, _, acts, y = planted(tmp_path / "other.h5", lambda layer, rows: np.full(2 * N_PAIRS, [0.0, 0.7, 4.0][layer]), seed=1)
    control = control_cache(tmp_path / "control.h5", "last")
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "train",
                str(train),
                "--out",
                str(out),
                "--method",
                "mean-diff",
                "--control",
                str(control),
                "--test-size",
                str(TEST_SIZE),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"at {HOOKS[1]} (layer chosen on the validation split of the training rows)" in err
    assert (
        main(
            [
                "probe",
                "eval",
                str(out),
                str(other),
                "--control",
                str(control),
                "--json",
                str(tmp_path / "e.json"),
                "--n-bootstrap",
                "200",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    payload = json.loads((tmp_path / "e.json").read_text())
    aurocs = {r["hook"]: r["auroc"] for r in payload["per_layer"]}
    assert max(aurocs, key=aurocs.get) == HOOKS[2]  # the planted layer wins on the evaluated rows
    head = payload["headline"]
    assert head["hook"] == HOOKS[1] and head["chosen_on"] == "validation split of the training rows"
    assert abs(head["auroc"] - aurocs[HOOKS[1]]) < 1e-12
    assert head["auroc_ci_low"] <= head["auroc"] <= head["auroc_ci_high"]
    assert head["max_hook"] == HOOKS[2] and head["n_layers"] == 3
    line = next(line for line in printed.splitlines() if line.startswith("headline:"))
    assert line.startswith(f"headline: AUROC {aurocs[HOOKS[1]]:.3f} [") and f"at {HOOKS[1]} " in line
    assert f"max over 3 layers {aurocs[HOOKS[2]]:.3f} at {HOOKS[2]} (chosen on these rows: optimistic" in line


def test_without_a_validation_split_nothing_is_chosen_on_the_reported_rows():
    from geomprobe.audit.sections.probes import choose_headline
    from geomprobe.probes.selection import chosen_hook, selection_record, validation_auroc

    # two positives among unpaired rows: no validation split with both classes on each side
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3, 12, 4)), np.r_[np.ones(2), np.zeros(10)].astype(int)
    assert validation_auroc(X, y, None, "mean-diff", device="cpu") is None
    record = selection_record(HOOKS, None, reason="too few training rows for a validation split")
    assert record["rule"] == "none" and record["hook"] is None and "too few" in record["reason"]
    # the audit then fixes the primary method's middle layer in advance, whatever the held-out AUROC says
    per_layer = [
        ProbeLayer(k, h, m, a, 0.5, 0.7, 0.0, 4)
        for m in ("logistic", "lda")
        for k, (h, a) in enumerate(zip(HOOKS, [0.9, 0.6, 1.0]))
    ]
    chosen, rule = choose_headline(per_layer, "logistic")
    assert (chosen.method, chosen.layer) == ("logistic", 1) and rule.startswith("fixed in advance")
    # an older probe without a selection: its held-out training metrics choose only for another cache's rows
    metrics = [{"hook": h, "auroc": a} for h, a in zip(HOOKS, [0.6, 0.95, 0.7])]
    old = SimpleNamespace(hooks=HOOKS, meta={"metrics": metrics, "train_cache": "train.h5"})
    assert chosen_hook(old, eval_rows="all", eval_cache="other.h5") == (
        HOOKS[1],
        "probe's held-out training split (another cache)",
    )
    assert chosen_hook(old, eval_rows="held-out", eval_cache="train.h5")[0] is None
    assert chosen_hook(old, eval_rows="all", eval_cache="train.h5")[0] is None  # --all-rows on its own training cache
