"""The CHES-DPO experiment (geomprobe.organisms.dpo, benchmarks/ches_dpo.py) on the tiny model.

References: token ids from the tokenizer's own chat template, log-probabilities summed in a Python
loop over one unpadded forward pass per sequence (scipy's logsumexp), the CHES ranking recomputed
with ``ches_scores``, bootstrap intervals redrawn with numpy from the documented draw rule.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from geomprobe.ches import ches_scores, load_preferences
from geomprobe.core.errors import GeomprobeError
from geomprobe.models import load_checkpoint
from geomprobe.organisms.dpo import (
    DPOSettings,
    difference_interval,
    encode_pairs,
    mean_interval,
    sequence_logprobs,
    split_thirds,
    train_dpo,
)

ROOT = Path(__file__).resolve().parent.parent


def reference_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Prompt ids from the template with the generation prompt; the response's own ids and eos."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
    return prompt_ids, tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def brute_logprob(hf_model, prompt_ids, response_ids) -> float:
    """Sum of log p(token | everything before it) over the response, one unpadded sequence, a loop."""
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor([list(prompt_ids) + list(response_ids)])).logits[0].double().numpy()
    total = 0.0
    for k, token in enumerate(response_ids):
        row = logits[len(prompt_ids) - 1 + k]
        total += row[token] - logsumexp(row)
    return total


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_llama_dir):
    return load_checkpoint(tiny_llama_dir, device="cpu")


def test_pairs_are_encoded_on_the_positions_ches_sums(tiny_ckpt, tiny_llama):
    prefs = load_preferences("preferences", limit=6)
    enc = encode_pairs(tiny_ckpt.tokenizer, prefs)
    ches = ches_scores(tiny_llama, prefs)
    assert [len(e.chosen_ids) for e in enc] == ches.n_chosen.tolist()  # one term per token, end-of-turn included
    assert [len(e.rejected_ids) for e in enc] == ches.n_rejected.tolist()
    for pair, e in zip(prefs.pairs, enc):
        prompt_ids, chosen_ids = reference_ids(tiny_ckpt.tokenizer, pair.prompt, pair.chosen)
        assert list(e.prompt_ids) == prompt_ids and list(e.chosen_ids) == chosen_ids
        assert list(e.rejected_ids) == reference_ids(tiny_ckpt.tokenizer, pair.prompt, pair.rejected)[1]


def test_sequence_logprobs_match_a_loop_over_one_sequence_at_a_time(tiny_ckpt):
    enc = encode_pairs(tiny_ckpt.tokenizer, load_preferences("preferences", limit=5))
    chosen, rejected = sequence_logprobs(tiny_ckpt.hf_model, enc, batch_size=3)  # batches mix lengths and sides
    for i, e in enumerate(enc):
        assert chosen[i] == pytest.approx(brute_logprob(tiny_ckpt.hf_model, e.prompt_ids, e.chosen_ids), abs=1e-3)
        assert rejected[i] == pytest.approx(brute_logprob(tiny_ckpt.hf_model, e.prompt_ids, e.rejected_ids), abs=1e-3)
    one = sequence_logprobs(tiny_ckpt.hf_model, enc, batch_size=1)
    np.testing.assert_allclose(one[0], chosen, atol=1e-4)
    with pytest.raises(GeomprobeError, match="batch_size must be at least 1"):
        sequence_logprobs(tiny_ckpt.hf_model, enc, batch_size=0)


def test_dpo_raises_the_margin_trains_only_the_adapted_matrices_and_is_seeded(tiny_llama_dir):
    prefs = load_preferences("preferences", limit=6)
    settings = DPOSettings(steps=4, batch_size=2, lr=1e-2, seed=3)
    runs = []
    for reference in (False, True, True):
        ckpt = load_checkpoint(tiny_llama_dir, device="cpu")
        start = {k: v.clone() for k, v in ckpt.hf_model.state_dict().items()}
        enc = encode_pairs(ckpt.tokenizer, prefs)
        before = sequence_logprobs(ckpt.hf_model, enc)
        model, log = train_dpo(ckpt.hf_model, ckpt.tokenizer, enc, settings, reference=before if reference else None)
        after = sequence_logprobs(model, enc)
        runs.append(np.concatenate(after) - np.concatenate(before))
        assert log.steps == len(log.losses) == 4 and log.trl_tokens_agree == len(enc)
        assert log.losses[0] == pytest.approx(np.log(2), abs=1e-5)  # the policy starts as its own reference
        end = model.state_dict()
        assert torch.equal(end["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
        assert not torch.equal(end["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])
        assert set(end) == set(start)  # merged: a plain model again, no adapter tensors
    margin = runs[0][:6] - runs[0][6:]
    assert margin.mean() > 0  # DPO widened the gap between chosen and rejected
    # trl's own reference pass (adapter off) and the precomputed log-probs train the same model; a seed repeats exactly.
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-3)
    np.testing.assert_array_equal(runs[1], runs[2])


def test_split_thirds_and_settings():
    high, low = split_thirds([3.0, 1.0, 5.0, 1.0, 9.0, 0.0, 1.0])
    assert high.tolist() == [4, 2] and low.tolist() == [6, 5]  # ties keep file order (rank order: 1, 3, 6)
    with pytest.raises(GeomprobeError, match="at least 3 pairs"):
        split_thirds([1.0, 2.0])
    with pytest.raises(GeomprobeError, match="steps must be at least 1"):
        DPOSettings(steps=0)
    with pytest.raises(GeomprobeError, match="beta must be positive"):
        DPOSettings(beta=0.0)


def test_intervals_redraw_with_numpy():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=11), rng.normal(1.0, size=8)
    n_boot = 300
    draws = np.random.default_rng(5)
    reps = []
    for _ in range(n_boot):  # replicate r: stratum a, then stratum b, each rng.integers(0, m, m)
        ra, rb = a[draws.integers(0, len(a), len(a))], b[draws.integers(0, len(b), len(b))]
        reps.append(ra.mean() - rb.mean())
    got = difference_interval(a, b, n_bootstrap=n_boot, seed=5)
    assert got.estimate == pytest.approx(a.mean() - b.mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    single = np.random.default_rng(5)
    means = [a[single.integers(0, len(a), len(a))].mean() for _ in range(n_boot)]
    one = mean_interval(a, n_bootstrap=n_boot, seed=5)
    assert (one.estimate, one.low, one.high) == pytest.approx((a.mean(), *np.quantile(means, [0.025, 0.975])))


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ches_dpo", ROOT / "benchmarks" / "ches_dpo.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_end_to_end_on_the_tiny_model(tiny_llama, tiny_llama_dir, tiny_ckpt, tmp_path, capsys):
    bench = load_benchmark()
    out, md, models = tmp_path / "dpo.json", tmp_path / "dpo.md", tmp_path / "models"
    argv = ["--quick", "--model", str(tiny_llama_dir), "--device", "cpu", "--lr", "1e-2", "--steps", "3"]
    argv += ["--json", str(out), "--markdown", str(md), "--save-models", str(models)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert md.read_text().strip() in printed and "--quick: a pipeline check" in printed

    # The thirds are the top and bottom n // 3 pairs of the CHES ranking, recomputed here.
    prefs = load_preferences("preferences", limit=9)
    ches = ches_scores(tiny_llama, prefs)
    order = np.argsort(-ches.ches[0], kind="stable").tolist()
    assert payload["split"] == {"high": order[:3], "low": order[-3:]}
    assert [p["ches"] for p in payload["thirds"]["high"]["pairs"]] == pytest.approx(ches.ches[0, order[:3]].tolist())

    # Before and after, per pair, against one forward pass of the base model and of the saved trained model.
    for name in ("high", "low"):
        record = payload["thirds"][name]
        trained = load_checkpoint(models / f"{name}-ches", device="cpu")
        for p in record["pairs"]:
            pair = prefs.pairs[p["index"]]
            prompt_ids, chosen_ids = reference_ids(tiny_ckpt.tokenizer, pair.prompt, pair.chosen)
            before = brute_logprob(tiny_ckpt.hf_model, prompt_ids, chosen_ids)
            after = brute_logprob(trained.hf_model, prompt_ids, chosen_ids)
            assert (p["chosen_before"], p["chosen_after"]) == pytest.approx((before, after), abs=1e-3)
            assert p["chosen_change"] == pytest.approx(after - before, abs=1e-3)
            rejected_ids = reference_ids(tiny_ckpt.tokenizer, pair.prompt, pair.rejected)[1]
            change = brute_logprob(trained.hf_model, prompt_ids, rejected_ids) - brute_logprob(
                tiny_ckpt.hf_model, prompt_ids, rejected_ids
            )
            assert p["rejected_change"] == pytest.approx(change, abs=1e-3)
        changes = np.array([p["chosen_change"] for p in record["pairs"]])
        assert abs(changes).max() > 0.01  # training moved the log-probabilities (lr 1e-2)
        iv = record["chosen_change"]
        assert iv["estimate"] == pytest.approx(changes.mean()) and iv["ci_low"] <= iv["estimate"] <= iv["ci_high"]
        assert record["train"]["steps"] == 3 and record["refusal"]["n"] == 2

    # The differences and the verdict follow from the per-pair numbers and the judge's flags.
    diff = payload["difference_high_minus_low"]
    means = {n: np.mean([p["chosen_change"] for p in payload["thirds"][n]["pairs"]]) for n in ("high", "low")}
    assert diff["chosen_change"]["estimate"] == pytest.approx(means["high"] - means["low"])
    rates = {n: payload["thirds"][n]["refusal"]["rate"] for n in ("high", "low")}
    assert diff["refusal_rate"]["estimate"] == pytest.approx(rates["high"] - rates["low"])
    assert payload["verdict"]["likelihood"] == bench.verdict(diff["chosen_change"])
    assert bench.verdict({"estimate": -1.0, "ci_low": -2.0, "ci_high": -0.5}) == "reproduced"
    assert bench.verdict({"estimate": 1.0, "ci_low": 0.5, "ci_high": 2.0}) == "opposite"
    assert bench.verdict({"estimate": -1.0, "ci_low": -2.0, "ci_high": 0.5}) == "not resolved"
    assert payload["verdict"]["likelihood_line"] in printed
    heldout = payload["base_refusal"]
    assert heldout["n"] == 2 and not set(heldout["prompts"]) & {p.prompt for p in prefs.pairs}

    # An existing output without --overwrite: one line, exit 2, before any model loads.
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "\n" not in err
