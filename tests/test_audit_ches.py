"""The audit's CHES section against geomprobe.ches, the paper's formula written out, and hand-made bootstraps.

The section runs here on hand-built contexts (the context is its whole input), so no other section
is needed; ``tests/test_audit.py`` checks it inside whole audits (metrics.json, report, ``--against``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from tiny import build_tiny_model

from geomprobe.audit import FULL, QUICK, AuditSizes, run_audit
from geomprobe.audit.context import AuditContext, AuditOptions, StageClock, as_metrics
from geomprobe.audit.sections.ches import ChesSection
from geomprobe.ches import ches_scores, load_preferences
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError
from geomprobe.models import load_model

LAYERS = [0, 1]


def _context(model, tmp_path: Path, sizes: AuditSizes = FULL, **options) -> AuditContext:
    return AuditContext(
        model,
        sets={},
        layers=LAYERS,
        sizes=sizes,
        options=AuditOptions(device="cpu", **options),
        out_dir=tmp_path,
        cache_dir=tmp_path,
        clock=StageClock(lambda stage, message: None),
    )


def _papers_formula(folder: Path, pair, layer: str | int) -> tuple[float, float]:
    """(CHES, LN-CHES) of one pair from a plain Hugging Face forward pass, summed term by term as Definition 2 says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    user = [{"role": "user", "content": pair.prompt}]
    prefix = tok(tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids

    def summed(response: str) -> tuple[np.ndarray, int]:
        text = tok.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=False, continue_final_message=True
        )
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        h = (states[-1] if layer == "final" else states[int(layer) + 1])[0].double().numpy()  # [l + 1]: block l's output
        n_terms = len(ids) - len(prefix) + 1  # every response token, and the end of the turn
        total = np.zeros(h.shape[1])
        for k in range(1, n_terms + 1):  # the k-th term: the state after x and y_<k
            total += h[len(prefix) + k - 2]
        return total, n_terms

    a, na = summed(pair.chosen)
    b, nb = summed(pair.rejected)
    return float(a @ b - a @ a), float((a / na) @ (b / nb) - (a / na) @ (a / na))


def test_section_matches_geomprobe_ches_and_the_papers_formula(tiny_llama, tiny_llama_dir, tmp_path):
    sizes = FULL.replace(ches={"n_pairs": 12, "top_share": 0.25, "n_top": 4})
    result = ChesSection().run(_context(tiny_llama, tmp_path, sizes))
    record = as_metrics(result)
    every = load_preferences("preferences")
    rows = np.linspace(0, len(every) - 1, 12).round().astype(int).tolist()  # the evenly spread subset, written out
    assert [p["index"] for p in record["pairs"]] == rows and record["n_pairs"] == 12
    direct = ches_scores(tiny_llama, load_preferences("preferences", limit=12), layers=["final", *LAYERS])
    assert [every.pairs[i].prompt for i in rows] == direct.prompts
    assert (record["layer"], record["hook"], record["dtype"], record["model_dtype"]) == (
        "final",
        "ln_final.hook_out",
        "float64",
        "float32",
    )
    np.testing.assert_allclose([p["ches"] for p in record["pairs"]], direct.ches[0], rtol=1e-9)
    np.testing.assert_allclose([p["ln_ches"] for p in record["pairs"]], direct.ln_ches[0], rtol=1e-9)
    assert [p["n_chosen_terms"] for p in record["pairs"]] == direct.n_chosen.tolist()
    # One compliance pair and one near-duplicate pair from the paper's formula, at final and at block 0
    # (Hugging Face's last hidden state is after the final norm, so block 1's output is not among them).
    for j in (0, 11):
        pair = every.pairs[rows[j]]
        for row, layer in ((0, "final"), (1, 0)):
            ches, ln_ches = _papers_formula(tiny_llama_dir, pair, layer)
            assert direct.ches[row, j] == pytest.approx(ches, rel=1e-5, abs=1e-6 * np.abs(direct.ches[row]).max())
            assert direct.ln_ches[row, j] == pytest.approx(ln_ches, rel=1e-5, abs=1e-6 * np.abs(direct.ln_ches[row]).max())
        assert record["pairs"][j]["kind"] == pair.source["kind"]
    assert {p["kind"] for p in record["pairs"]} == {"compliance", "near-duplicate"}
    # Ranking and flags by LN-CHES (the default), written out: ceil(0.25 * 12) = 3 flagged.
    ln = direct.ln_ches[0]
    order = np.argsort(-ln, kind="stable")
    assert [p["rank"] for p in record["pairs"]] == (np.argsort(order) + 1).tolist()
    assert [p["flagged"] for p in record["pairs"]] == [bool(r < 3) for r in np.argsort(order)]
    assert record["n_flagged"] == 3 and record["share_flagged"] == 0.25 and record["rank_by"] == "ln_ches"
    assert record["top_pairs"] == [rows[i] for i in order[:4]]
    for name, values in (("ches", direct.ches[0]), ("ln_ches", ln)):
        s = record[name]
        assert (s["min"], s["max"]) == (values.min(), values.max())
        assert s["median"] == pytest.approx(float(np.median(values))) and s["mean"] == pytest.approx(values.mean())
        assert s["q25"] == pytest.approx(float(np.percentile(values, 25)))
        assert s["std"] == pytest.approx(float(np.sqrt(((values - values.mean()) ** 2).mean())))
    kinds = [p["kind"] for p in record["pairs"]]
    for kind, rec in record["by_kind"].items():
        members = np.array([k == kind for k in kinds])
        assert rec["n"] == members.sum() and rec["n_flagged"] == sum(p["flagged"] for p in record["pairs"] if p["kind"] == kind)
        assert rec["median_ln_ches"] == pytest.approx(float(np.median(ln[members])))
    # Per block output: the medians, and the rank agreement with `final` by Pearson's r of the ranks.
    for k, rec in enumerate(record["per_layer"], start=1):
        assert (rec["layer"], rec["hook"]) == (LAYERS[k - 1], f"blocks.{LAYERS[k - 1]}.hook_resid_post")
        assert rec["median_ches"] == pytest.approx(float(np.median(direct.ches[k])))
        assert rec["spearman"] == pytest.approx(np.corrcoef(rankdata(ln), rankdata(direct.ln_ches[k]))[0, 1])
        flagged_here = set(np.argsort(-direct.ln_ches[k], kind="stable")[:3].tolist())
        assert rec["flagged_agreement"] == pytest.approx(len(flagged_here & set(order[:3].tolist())) / 3)
    assert not np.allclose(direct.ches[2], direct.ches[0])  # block 1 is read before the final norm


def _brute_bootstrap(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float, float]:
    """Interval and p-value of mean(b) - mean(a) over the same resampled pairs, one replicate at a time."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_bootstrap):
        rows = rng.integers(0, len(a), len(a))
        deltas.append(b[rows].mean() - a[rows].mean())
    deltas = np.array(deltas)
    p = min(1.0, 2 * (1 + min((deltas <= 0).sum(), (deltas >= 0).sum())) / (1 + n_bootstrap))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(low), float(high), float(p)


def test_compare_matches_a_direct_recomputation(tiny_llama, tmp_path):
    other = load_model(build_tiny_model(tmp_path / "other", seed=1), device="cpu")
    sizes = QUICK.replace(ches={"n_bootstrap": 300})
    section = ChesSection()
    a = section.run(_context(tiny_llama, tmp_path, sizes, seed=7))
    b = section.run(_context(other, tmp_path, sizes, seed=7))
    comp = as_metrics(section.compare(a, b))
    prefs = load_preferences("preferences", limit=QUICK.ches.n_pairs)
    sa, sb = ches_scores(tiny_llama, prefs), ches_scores(other, prefs)
    assert (comp["n_pairs"], comp["n_bootstrap"], comp["layer"], comp["rank_by"]) == (12, 300, "final", "ln_ches")
    for name in ("ches", "ln_ches"):
        x, y = getattr(sa, name)[0], getattr(sb, name)[0]
        got = comp[name]
        assert (got["a"], got["b"]) == pytest.approx((x.mean(), y.mean()), rel=1e-9)
        assert got["delta"] == pytest.approx(y.mean() - x.mean(), rel=1e-9)
        np.testing.assert_allclose(got["per_pair_delta"], y - x, rtol=1e-9, atol=1e-9 * np.abs(x).max())
        low, high, p = _brute_bootstrap(x, y, 300, seed=7)
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), rel=1e-9)
        assert got["p_value"] == pytest.approx(p)
        assert got["spearman"] == pytest.approx(np.corrcoef(rankdata(x), rankdata(y))[0, 1])
    flagged_a = set(np.argsort(-sa.ln_ches[0], kind="stable")[:4].tolist())  # ceil(0.33 * 12) = 4
    flagged_b = set(np.argsort(-sb.ln_ches[0], kind="stable")[:4].tolist())
    assert comp["flagged_overlap"] == pytest.approx(len(flagged_a & flagged_b) / 4)
    # The same checkpoint against itself: no change, full agreement.
    same = as_metrics(section.compare(a, a))
    assert same["ln_ches"]["delta"] == 0 and same["ln_ches"]["spearman"] == pytest.approx(1) and same["flagged_overlap"] == 1
    assert math.isclose(same["ches"]["p_value"], 1.0)


def test_a_preference_file_and_bad_inputs(tiny_llama, tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "How do I bake bread?", "chosen": "Mix flour and water, then bake it.", "rejected": "I can't help."},
        {"prompt": "Explain how to pick a lock.", "chosen": "I can't help with that.", "rejected": "I can help with that."},
        {"prompt": "Tell me about Rome.", "chosen": "Its roads ran across Europe.", "rejected": "The quick brown fox."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = as_metrics(ChesSection().run(_context(tiny_llama, tmp_path, QUICK, preferences=str(path))))
    direct = ches_scores(tiny_llama, rows)
    assert record["dataset"] == "prefs" and record["n_pairs"] == 3 and [p["index"] for p in record["pairs"]] == [0, 1, 2]
    np.testing.assert_allclose([p["ches"] for p in record["pairs"]], direct.ches[0], rtol=1e-9)
    assert record["by_kind"] == {"unlabelled": {**record["by_kind"]["unlabelled"], "n": 3, "n_flagged": 1}}
    # A bad file is one line before anything loads (the model does not exist).
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
    missing = str(tmp_path / "no-model")
    for given, message in ((bad, "'chosen' equals 'rejected'"), (tmp_path / "nope.jsonl", "neither a bundled name")):
        assert main(["audit", "--model", missing, "--out", str(tmp_path / "o"), "--preferences", str(given)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("geomprobe: error:") and message in err and "Traceback" not in err
        with pytest.raises(GeomprobeError, match=message):
            run_audit(missing, out_dir=tmp_path / "o", preferences=given)
    assert not (tmp_path / "o").exists()
    # The audit's output folder may not be the preference file.
    with pytest.raises(GeomprobeError, match="would overwrite the input"):
        run_audit(missing, out_dir=path, preferences=path, overwrite=True)


def test_sizes():
    assert (FULL.ches.n_pairs, QUICK.ches.n_pairs) == (None, 12)
    assert (FULL.ches.n_bootstrap, QUICK.ches.n_bootstrap) == (1000, 200) and FULL.ches.rank_by == "ln_ches"
    for bad, message in (
        ({"rank_by": "length"}, "rank_by must be one of ches, ln_ches"),
        ({"top_share": 0}, "top_share must be in"),
        ({"n_pairs": 0}, "n_pairs >= 1"),
        ({"n_top": 0}, "n_top >= 1"),
    ):
        with pytest.raises(GeomprobeError, match=message):
            AuditSizes(ches=bad)
