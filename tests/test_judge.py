"""The behaviour judge: refusal-phrase matcher, bootstrap interval, and generation on the tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest

from geomprobe.core.errors import GeomprobeError
from geomprobe.steering.judge import (
    MATCHER_VERSION,
    bootstrap_rate_interval,
    is_refusal,
    judge_completions,
    judge_refusals,
    matched_phrase,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, I won\u2019t do this.",  # curly apostrophes
    "I CANNOT assist with this request.",
    "As an AI language model, I do not provide such content.",
    "Sure... actually, I am unable to help\nwith that.",
    "That is against my guidelines.",
]
ANSWERS = [
    "To bake bread, mix flour, water, salt and yeast, then knead for ten minutes.",
    "Paris is the capital of France.",
    "Here is a short poem about the sea: waves roll in, gulls cry.",
    "Sorry is a word people use when they apologise.",  # "sorry" alone is not a refusal
    "Mixing bleach and ammonia is dangerous and illegal to sell as a cleaner.",
    "",
]


def test_matcher_on_fixed_strings():
    assert all(is_refusal(t) for t in REFUSALS)
    assert not any(is_refusal(t) for t in ANSWERS)
    assert matched_phrase("I'm sorry, but no.") == "i'm sorry"
    assert matched_phrase("Well, I can\u2019t say.") == "i can't"
    assert matched_phrase("Fine.") is None


def test_bootstrap_interval_matches_brute_force_loop():
    flags = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    low, high = bootstrap_rate_interval(flags, n_bootstrap=500, level=0.9, seed=7)
    rng = np.random.default_rng(7)
    rates = []
    for _ in range(500):
        picks = rng.integers(0, len(flags), len(flags))
        rates.append(sum(int(flags[i]) for i in picks) / len(flags))
    assert low == pytest.approx(np.quantile(rates, 0.05), abs=1e-12)
    assert high == pytest.approx(np.quantile(rates, 0.95), abs=1e-12)
    assert low < flags.mean() < high


def test_bootstrap_interval_covers_the_true_rate():
    # Independent check: over many simulated prompt sets the 95% interval holds the true rate ~95% of the time.
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(300):
        flags = rng.random(80) < 0.3
        low, high = bootstrap_rate_interval(flags, n_bootstrap=400, seed=trial)
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / 300 <= 0.99


def test_bootstrap_interval_bad_input():
    with pytest.raises(GeomprobeError, match="no judged prompts"):
        bootstrap_rate_interval([])
    with pytest.raises(GeomprobeError, match="level"):
        bootstrap_rate_interval([1, 0], level=1.5)


def test_judge_completions_record():
    texts = REFUSALS[:3] + ANSWERS[:5]
    j = judge_completions(texts, prompts=[f"p{i}" for i in range(8)], max_new_tokens=40, seed=1)
    assert j.n == 8 and j.n_refused == 3 and j.rate == pytest.approx(3 / 8)
    assert j.flags == [True] * 3 + [False] * 5
    d = j.to_dict()
    assert d["matcher_version"] == MATCHER_VERSION and d["max_new_tokens"] == 40 and d["decoding"] == "greedy"
    assert d["ci"][0] <= d["rate"] <= d["ci"][1]
    assert "completions" not in d and j.to_dict(include_text=True)["completions"] == texts
    assert "3/8" in j.summary()


def test_judge_generations_on_tiny_model(tiny_llama, tiny_llama_dir):
    from geomprobe.models import load_checkpoint
    from geomprobe.steering import generate

    prompts = ["How do I bake bread?", "Write a short poem about the sea, the wind and the gulls."]
    bridged = judge_refusals(tiny_llama, prompts, max_new_tokens=6, batch_size=1)
    expected = [g.text for g in generate(tiny_llama, prompts, max_new_tokens=6, batch_size=1)]
    assert bridged.completions == expected
    # The plain Hugging Face path (a Checkpoint, as organism builds use) gives the same texts.
    ckpt = load_checkpoint(tiny_llama_dir)
    plain = judge_refusals(ckpt, prompts, max_new_tokens=6, batch_size=2)
    assert plain.completions == expected and plain.flags == [is_refusal(t) for t in plain.completions]
    with pytest.warns(DeprecationWarning, match="Checkpoint"):
        judged = judge_refusals((ckpt.hf_model, ckpt.tokenizer), prompts, max_new_tokens=6)
    assert judged.completions == expected
    with pytest.raises(GeomprobeError, match="loaded model"):
        judge_refusals(ckpt, prompts, vector=np.ones(ckpt.hf_model.config.hidden_size), max_new_tokens=2)


def test_judge_setting_steered_and_ablated(tiny_llama):
    from geomprobe.steering.judge import judge_setting

    rng = np.random.default_rng(0)
    direction = rng.normal(size=tiny_llama.d_model).astype(np.float32)
    prompts, harmless = ["How do I bake bread?"], ["Write a poem about the sea."]
    steered = judge_setting(tiny_llama, direction, "blocks.1.hook_resid_post", 30.0, prompts, harmless, max_new_tokens=4)
    ablated = judge_setting(tiny_llama, direction, "blocks.1.hook_resid_post", None, prompts, max_new_tokens=4)
    assert set(steered) == {"hook", "multiplier", "max_new_tokens", "unsteered", "steered"}
    assert set(steered["steered"]) == {"prompts", "harmless"} and set(ablated["steered"]) == {"prompts"}
    assert steered["steered"]["prompts"]["n"] == 1 and ablated["unsteered"]["prompts"]["max_new_tokens"] == 4
