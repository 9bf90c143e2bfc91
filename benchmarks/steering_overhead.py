"""Cost of steering during generation, and of the TransformerBridge wrapper itself.

Same prompts, same run, interleaved rounds; each setting's fastest round is reported (the least
disturbed by other load on a shared machine), with the median alongside (greedy, fixed length):

  plain-hf            Hugging Face ``generate`` on an unwrapped copy of the model
  bridge              ``generate`` on the bridge-wrapped HF model, no hooks (geomprobe's path)
  bridge-tl-generate  TransformerLens' own ``bridge.generate`` loop, no hooks
  steer-1             bridge + one steering hook (positions=all)
  steer-1-generated   bridge + one steering hook, positions=generated (adds the position tracker)
  steer-20            bridge + twenty steering hooks

Target: steered generation within 2% of un-hooked generation through the same path.

    python benchmarks/steering_overhead.py [--model default] [--new-tokens 32] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from geomprobe.models import load_checkpoint, load_model
from geomprobe.steering import SteeringVector, ensure_kv_cache_compat, render_prompts, steer
from geomprobe.steering.apply import tokenize_left

PROMPTS = [
    "Give me three tips for sleeping better.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn leaves.",
    "What should I pack for a weekend hiking trip?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared small machine more threads oversubscribe and "
                         "the timings become noise; 0 leaves torch's default)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    plain = load_checkpoint(args.model, device=model.device)
    ensure_kv_cache_compat(model)
    texts = render_prompts(model.tokenizer, PROMPTS)
    enc = tokenize_left(model, texts, rendered_chat=True)
    n_new = args.new_tokens
    gen_kwargs = dict(
        max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, temperature=None, top_p=None, top_k=None,
        pad_token_id=model.tokenizer.pad_token_id, use_cache=True,
    )
    rng = np.random.default_rng(0)
    n_layers = model.n_layers
    one = SteeringVector({f"blocks.{n_layers // 2}.hook_resid_post": rng.normal(size=model.d_model)}, "mean-diff", "last")
    twenty_layers = list(range(max(0, n_layers - 20), n_layers))[:20]
    many = SteeringVector(
        {f"blocks.{l}.hook_resid_post": rng.normal(size=model.d_model) for l in twenty_layers}, "mean-diff", "last"
    )

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def run_plain():
        return plain.hf_model.generate(**enc, **gen_kwargs)

    def run_bridge():
        return model.hf_model.generate(**enc, **gen_kwargs)

    def run_tl():
        return model.bridge.generate(
            enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=n_new, do_sample=False,
            stop_at_eos=False, verbose=False, prepend_bos=False,
        )

    def steered(vector, positions, multiplier=1e-3):
        def run():
            with steer(model, vector, multiplier, positions=positions, prompt_length=enc["input_ids"].shape[1]):
                return model.hf_model.generate(**enc, **gen_kwargs)

        return run

    settings = {
        "plain-hf": run_plain,
        "bridge": run_bridge,
        "bridge-tl-generate": run_tl,
        "steer-1": steered(one, "all"),
        "steer-1-generated": steered(one, "generated"),
        f"steer-{len(twenty_layers)}": steered(many, "all"),
    }
    with torch.no_grad():
        # Correctness first: the wrapper and a zero-multiplier hook must not change the tokens.
        ref = run_plain()
        assert torch.equal(run_bridge(), ref), "bridge generation differs from plain HF generation"
        assert torch.equal(steered(one, "all", 0.0)(), ref), "zero steering changed the tokens"
        for fn in settings.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.rounds):
            for name, fn in settings.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)

    n_tokens = len(PROMPTS) * n_new
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"model {model.model_id} on {model.device}, {len(PROMPTS)} prompts x {n_new} new tokens, "
          f"greedy, best of {args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}")
    print(f"{'setting':22s} {'seconds':>8s} {'tokens/s':>9s} {'vs bridge':>10s} {'vs plain-hf':>12s} {'median s':>9s}")
    for name, t in best.items():
        print(f"{name:22s} {t:8.3f} {n_tokens / t:9.1f} {t / best['bridge'] - 1:+9.1%} "
              f"{t / best['plain-hf'] - 1:+11.1%} {med[name]:9.3f}")
    for name in settings:
        if name.startswith("steer"):
            over = best[name] / best["bridge"] - 1
            print(f"{name}: steering overhead {over:+.2%} over un-hooked bridge generation "
                  f"({'within' if over <= 0.02 else 'ABOVE'} the 2% target)")


if __name__ == "__main__":
    main()
