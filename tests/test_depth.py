"""Alignment depth (geomprobe.steering.depth, ``geomprobe depth``) against brute-force references on tiny models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build_tiny_model

from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError
from geomprobe.models import complete, default_stop_ids, load_model
from geomprobe.steering.depth import alignment_depth, kl_profile, per_position_kl, prefill_auc

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "How do I bake bread at home?",
    "Explain how to pick a lock.",
    "Tell me about the Roman roads.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory) -> Path:
    """Same architecture and tokenizer as tiny_llama, other weights."""
    return build_tiny_model(tmp_path_factory.mktemp("depth-twin"), seed=1)


@pytest.fixture(scope="module")
def twin(twin_dir):
    return load_model(twin_dir, device="cpu")


@pytest.fixture(scope="module")
def depth(tiny_llama, twin):
    return alignment_depth(tiny_llama, twin, PROMPTS, ks=(0, 1, 2, 5), max_tokens=8, n_bootstrap=200, seed=3)


def _rendered_ids(model, prompt: str) -> list[int]:
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _brute_kl(a, b, prompt: str, response: list[int]) -> list[float]:
    """KL(B || A) position by position: one unpadded forward pass per prefix, float64 softmax."""
    ids = _rendered_ids(a, prompt)
    out = []
    for t in range(len(response)):
        prefix = torch.tensor([ids + response[:t]])
        with torch.no_grad():
            pa = torch.softmax(a.hf_model(prefix).logits[0, -1].double(), -1)
            pb = torch.softmax(b.hf_model(prefix).logits[0, -1].double(), -1)
        out.append(float((pb * (pb.log() - pa.log())).sum()))
    return out


def test_per_position_kl_matches_brute_force(tiny_llama, twin):
    """Ragged responses in right-padded batches give each position's KL of the unpadded prefix."""
    responses = [[5, 17, 40, 99, 3], [250], [7, 7, 7, 120, 33, 64, 2, 300], []]
    prompts = PROMPTS[:4]
    got = per_position_kl(tiny_llama, twin, prompts, responses, batch_size=3)
    assert [len(g) for g in got] == [5, 1, 8, 0]
    for prompt, resp, kl in zip(prompts, responses, got):
        assert kl == pytest.approx(_brute_kl(tiny_llama, twin, prompt, resp), rel=1e-6, abs=1e-9)
    # KL of a model against itself is zero at every position
    assert max(np.abs(np.concatenate(per_position_kl(twin, twin, prompts, responses)))) < 1e-9


def test_profile_is_built_on_each_model_s_responses(depth, tiny_llama, twin):
    replies = complete(twin, PROMPTS, max_new_tokens=8).token_ids
    answers = complete(tiny_llama, PROMPTS, max_new_tokens=8).token_ids
    assert depth.n_prompts == depth.n_used == 5  # random tiny models never use a refusal phrase
    for kl, prompt, reply in zip(depth.aligned_replies.per_prompt, PROMPTS, replies):
        assert kl == pytest.approx(_brute_kl(tiny_llama, twin, prompt, reply), rel=1e-6, abs=1e-9)
    for kl, prompt, answer in zip(depth.base_answers.per_prompt, PROMPTS, answers):
        assert kl == pytest.approx(_brute_kl(tiny_llama, twin, prompt, answer), rel=1e-6, abs=1e-9)
    d = depth.to_dict()
    assert "per_prompt" not in d["aligned_replies"] and "texts" not in d
    assert json.loads(json.dumps(d)) == d
    assert depth.half_kl_tokens == depth.aligned_replies.half_kl_tokens and depth.prefill_auc == depth.prefill.auc


def _brute_profile(per_prompt, n_bootstrap, seed, ks):
    """Mean per position over the prompts that reach it, shares of the pooled total, half position and
    their percentile intervals, from a replicate-by-replicate loop over rng.integers(0, n, n)."""
    n, width = len(per_prompt), max(len(p) for p in per_prompt)

    def stats(rows):
        means, sums = [], []
        for t in range(width):
            vals = [per_prompt[i][t] for i in rows if len(per_prompt[i]) > t]
            means.append(np.mean(vals) if vals else np.nan)
            sums.append(sum(vals))
        total = sum(sums)
        cum = [sum(sums[: j + 1]) / total for j in range(width)]
        half = next(j + 1 for j in range(width) if cum[j] >= 0.5)
        return means, [cum[min(k, width) - 1] for k in ks], half

    rng = np.random.default_rng(seed)
    reps = [stats(rng.integers(0, n, n)) for _ in range(n_bootstrap)]
    means = np.array([r[0] for r in reps])
    mean_ci = [np.quantile(col[np.isfinite(col)], [0.025, 0.975]) for col in means.T]
    share_ci = np.quantile(np.array([r[1] for r in reps]), [0.025, 0.975], axis=0)
    half_ci = np.quantile([r[2] for r in reps], [0.025, 0.975])
    return stats(range(n)), mean_ci, share_ci, half_ci


def test_kl_profile_intervals_match_a_brute_force_bootstrap():
    rng = np.random.default_rng(0)
    per_prompt = [rng.exponential(1.0, size=m) * np.linspace(3, 0.2, m) for m in (6, 3, 9, 1, 9, 4, 7)]
    prof = kl_profile(per_prompt, "aligned_replies", n_bootstrap=300, seed=5, share_ks=(1, 2, 5, 10))
    (means, shares, half), mean_ci, share_ci, half_ci = _brute_profile(per_prompt, 300, 5, (1, 2, 5, 10))
    assert prof.mean == pytest.approx(means, rel=1e-12)
    assert prof.n_at == [sum(len(p) > t for p in per_prompt) for t in range(9)]
    assert [lo for lo in prof.ci_low] == pytest.approx([c[0] for c in mean_ci], rel=1e-9)
    assert [hi for hi in prof.ci_high] == pytest.approx([c[1] for c in mean_ci], rel=1e-9)
    assert [s.share for s in prof.share_first] == pytest.approx(shares, rel=1e-12)
    assert [s.ci_low for s in prof.share_first] == pytest.approx(list(share_ci[0]), rel=1e-9)
    assert [s.ci_high for s in prof.share_first] == pytest.approx(list(share_ci[1]), rel=1e-9)
    assert prof.share(10) == pytest.approx(1.0)  # past the longest response: the whole KL
    assert prof.half_kl_tokens == half
    assert (prof.half_ci_low, prof.half_ci_high) == (int(np.floor(half_ci[0])), int(np.ceil(half_ci[1])))
    assert prof.total_mean == pytest.approx(sum(map(sum, per_prompt)) / len(per_prompt))
    # a front-loaded profile (a shallow alignment) has its half in the first token
    shallow = kl_profile([np.array([5.0, 0.1, 0.1, 0.1])] * 4, "aligned_replies", n_bootstrap=50)
    assert shallow.half_kl_tokens == 1 and shallow.share(1) == pytest.approx(5 / 5.3)
    # no KL at all: shares and the half position are undefined, not made up
    flat = kl_profile([np.zeros(3)] * 3, "aligned_replies", n_bootstrap=20)
    assert flat.half_kl_tokens is None and all(s.share is None for s in flat.share_first)


def test_prefill_auc_matches_brute_force():
    rng = np.random.default_rng(1)
    ks = [0, 1, 2, 5, 10, 20]
    flags = rng.random((12, len(ks))) < np.linspace(0.9, 0.2, len(ks))

    def auc(rows):
        rates = [np.mean([flags[i, j] for i in rows]) for j in range(len(ks))]
        area = sum((ks[j + 1] - ks[j]) * (rates[j] + rates[j + 1]) / 2 for j in range(len(ks) - 1))
        return area / (ks[-1] - ks[0])

    got, low, high = prefill_auc(ks, flags, n_bootstrap=400, seed=9)
    draws = np.random.default_rng(9)
    reps = [auc(draws.integers(0, 12, 12)) for _ in range(400)]
    assert got == pytest.approx(auc(range(12)), rel=1e-12)
    assert (low, high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), rel=1e-9)
    assert prefill_auc([3], flags[:, :1], n_bootstrap=10)[0] == pytest.approx(flags[:, 0].mean())


def test_prefill_continues_after_exactly_k_answer_tokens(depth, tiny_llama, twin):
    """The prefill is the first k ids of A's answer; B's continuation equals a greedy loop written by hand."""
    answers = complete(tiny_llama, PROMPTS, max_new_tokens=8).token_ids
    stops = default_stop_ids(twin)
    assert [p.k for p in depth.prefill.points] == [0, 1, 2, 5]
    for point in depth.prefill.points:
        assert point.prefills == [a[: point.k] for a in answers] and point.n_clamped == 0
        for prompt, prefill, cont in zip(PROMPTS, point.prefills, point.continuation_ids):
            ids, new = _rendered_ids(twin, prompt) + prefill, []
            for _ in range(8):
                with torch.no_grad():
                    nxt = int(twin.hf_model(torch.tensor([ids])).logits[0, -1].argmax())
                if nxt in stops:
                    break
                ids.append(nxt)
                new.append(nxt)
            assert cont == new
        flags = [False] * len(PROMPTS)  # no refusal phrase in random text: the judge's rate and interval are 0
        assert point.flags == flags and (point.rate, point.ci_low, point.ci_high) == (0.0, 0.0, 0.0)
    assert depth.prefill.auc == 0.0


def test_k_longer_than_the_answer(tiny_llama, twin):
    answers = ["Sure, here", "Sure."]
    n_tokens = [len(tiny_llama.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    k = max(n_tokens) + 1
    with pytest.raises(GeomprobeError, match=f"k={k} is longer than the base answer to prompt 1"):
        alignment_depth(tiny_llama, twin, PROMPTS[:2], ks=(0, k), max_tokens=4, answers=answers, n_bootstrap=20)
    r = alignment_depth(tiny_llama, twin, PROMPTS[:2], ks=(0, k), max_tokens=4, answers=answers, n_bootstrap=20, clamp=True)
    assert r.prefill.points[1].n_clamped == 2
    assert r.prefill.points[1].prefills == [tiny_llama.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    # generated answers never exceed max_tokens: such a k is refused before any generation
    with pytest.raises(GeomprobeError, match="k=9 is longer than the base model's answers"):
        alignment_depth(tiny_llama, twin, PROMPTS, ks=(0, 9), max_tokens=8)


def test_mismatched_architectures_are_refused(tiny_llama, tiny_gpt2_dir):
    gpt2 = load_model(tiny_gpt2_dir, device="cpu")
    with pytest.raises(GeomprobeError, match="the base model is a llama and the aligned one a gpt2"):
        alignment_depth(tiny_llama, gpt2, PROMPTS, ks=(0, 1), max_tokens=4)


def test_cli_end_to_end(tiny_llama_dir, twin_dir, tmp_path, capsys):
    out = tmp_path / "depth"
    args = [
        "depth",
        "--base",
        str(tiny_llama_dir),
        "--aligned",
        str(twin_dir),
        "--limit",
        "4",
        "--max-tokens",
        "6",
        "--ks",
        "0,1,2,5",
        "--n-bootstrap",
        "100",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer n/a, dtype float32, 4 harmful prompts used (4 with a compliant base answer)" in printed
    assert "aligned_replies" in printed and "prefill AUC" in printed
    record = json.loads((out / "depth.json").read_text())
    assert record["ks"] == [0, 1, 2, 5] and record["n_prompts"] == 4 and record["max_tokens"] == 6
    assert len(record["texts"]["prompts"]) == 4 and set(record["texts"]["continuations"]) == {"0", "1", "2", "5"}
    assert (out / "depth.png").read_bytes()[:4] == b"\x89PNG"
    # the same run again: refused without --overwrite, replaced with it
    assert main(args) == 2
    assert "already holds a geomprobe depth; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_bad_inputs_exit_2_with_one_line(tiny_llama_dir, tiny_gpt2_dir, twin_dir, tmp_path, capsys):
    base = ["depth", "--base", str(tiny_llama_dir), "--device", "cpu"]
    # a k longer than any answer (--ks asked for explicitly), before any model loads
    assert main(base + ["--aligned", str(twin_dir), "--ks", "0,30", "--max-tokens", "12", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "geomprobe: error: k=30 is longer than the base model's answers (at most --max-tokens 12 tokens); "
        "pass smaller --ks or a larger --max-tokens"
    ]
    # mismatched vocabularies, read from config.json before loading
    other = tmp_path / "other-vocab"
    shutil.copytree(twin_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, vocab_size=config["vocab_size"] + 8)))
    assert main(base + ["--aligned", str(other), "--out", str(tmp_path / "b")]) == 2
    assert "vocabulary" in capsys.readouterr().err
    assert main(base + ["--aligned", str(twin_dir), "--ks", "0,-1", "--out", str(tmp_path / "c")]) == 2
    assert "integers >= 0" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")
    # mismatched architectures: one line on stderr, no traceback (a fresh process)
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", *base[:-2], "--aligned", str(tiny_gpt2_dir), "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "geomprobe: error: the base model is a llama and the aligned one a gpt2; alignment depth compares two checkpoints "
        "of one architecture and tokenizer"
    ]


def test_complete_refuses_a_prefill_count_that_does_not_match(twin):
    with pytest.raises(GeomprobeError, match="1 prefills for 2 prompts"):
        complete(twin, PROMPTS[:2], max_new_tokens=2, prefill_ids=[[5]])
