"""Cost of steering during generation, and of the TransformerBridge wrapper itself.

Same prompts, same run, interleaved rounds in a shuffled order (greedy, fixed length). Settings:

  hf                  plain Hugging Face ``generate`` on the loaded model with the bridge swapped
                      out (``unbridged``): the route ``geomprobe.steering.generate`` and
                      ``geomprobe steer generate`` take; no hooks
  hf-again            the same again: its difference from ``hf`` is the noise floor of this run
  steer-1             ``hf`` + one steering hook (``via="hf"``), positions=all
  steer-1-generated   ``hf`` + one hook, positions=generated (adds the position tracker)
  steer-20            ``hf`` + twenty hooks
  bridge              ``generate`` through the bridge's components, no hooks
  bridge-steer-1/-20  steering on the bridge's hook points (``via="bridge"``, the default of the
                      ``steer()`` context manager, where caching and probe hooks can run alongside)
  bridge-tl-generate  TransformerLens' own ``bridge.generate`` loop, no hooks
  plain-hf-copy       ``generate`` on a second, never-bridged copy loaded with ``from_pretrained``
                      defaults (SDPA attention; the bridge asks for eager attention)

It also times one steering-hook call on its own (decode-step shape, many repetitions) and scales
it by the calls a generation makes: the same overhead without the noise of whole generations.

Target: steered generation within 2% of plain generation through the same route. Each ratio
compares the fastest of the rounds (the least disturbed by other load); the per-round paired
median is shown alongside.

    python benchmarks/steering_overhead.py [--model default] [--new-tokens 32] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from transformer_lens.hook_points import HookPoint

from geomprobe.models import load_checkpoint, load_model, unbridged
from geomprobe.steering import SteeringVector, ensure_kv_cache_compat, render_prompts, steer
from geomprobe.steering.apply import _adder, _torch_hook, tokenize_left

PROMPTS = [
    "Give me three tips for sleeping better.",
    "Explain what a hash table is in two sentences.",
    "Write a haiku about autumn leaves.",
    "What should I pack for a weekend hiking trip?",
]


def hook_call_cost(x: torch.Tensor, add, *, torch_hook: bool, n: int = 20000) -> float:
    """Microseconds one steering hook adds to one call of the module it sits on (decode-step shape)."""

    def per_call(module) -> float:
        with torch.no_grad():
            for _ in range(500):
                module(x)
            t0 = time.perf_counter()
            for _ in range(n):
                module(x)
            return (time.perf_counter() - t0) / n * 1e6

    if torch_hook:  # via="hf": a torch forward hook on a Hugging Face module
        module = torch.nn.Identity()
        bare = per_call(module)
        handle = _torch_hook(module, "output", add)
        try:
            return max(per_call(module) - bare, 0.0)
        finally:
            handle.remove()
    module = HookPoint()  # via="bridge": a TransformerLens hook point
    bare = per_call(module)
    module.add_hook(add)
    try:
        return max(per_call(module) - bare, 0.0)
    finally:
        module.remove_hooks()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared small machine more threads oversubscribe and "
        "the timings become noise; 0 leaves torch's default)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    copy = load_checkpoint(args.model, device=model.device)
    ensure_kv_cache_compat(model)
    enc = tokenize_left(model, render_prompts(model.tokenizer, PROMPTS), rendered_chat=True)
    n_new = args.new_tokens
    gen_kwargs = dict(
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=model.tokenizer.pad_token_id,
        use_cache=True,
    )
    rng = np.random.default_rng(0)
    n_layers = model.n_layers
    one = SteeringVector({f"blocks.{n_layers // 2}.hook_resid_post": rng.normal(size=model.d_model)}, "mean-diff", "last")
    twenty_layers = list(range(max(0, n_layers - 20), n_layers))[:20]
    many = SteeringVector(
        {f"blocks.{l}.hook_resid_post": rng.normal(size=model.d_model) for l in twenty_layers}, "mean-diff", "last"
    )
    # On CPU, process CPU time: the work done, without the time a shared VM's scheduler takes away
    # (steal, other tenants); wall time on a GPU, where the host mostly waits.
    on_cpu = model.device.type == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def run_hf():
        with unbridged(model):
            return model.hf_model.generate(**enc, **gen_kwargs)

    def run_bridge():
        return model.hf_model.generate(**enc, **gen_kwargs)

    def run_tl():
        return model.bridge.generate(
            enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=n_new,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
            prepend_bos=False,
        )

    def run_copy():
        return copy.hf_model.generate(**enc, **gen_kwargs)

    def steered(vector, positions, via, multiplier=1e-3):
        def run():
            with steer(model, vector, multiplier, positions=positions, prompt_length=enc["input_ids"].shape[1], via=via):
                return model.hf_model.generate(**enc, **gen_kwargs)

        return run

    n_many = len(twenty_layers)
    # setting -> (run, baseline it is compared with)
    settings = {
        "hf": (run_hf, None),
        "hf-again": (run_hf, "hf"),
        "steer-1": (steered(one, "all", "hf"), "hf"),
        "steer-1-generated": (steered(one, "generated", "hf"), "hf"),
        f"steer-{n_many}": (steered(many, "all", "hf"), "hf"),
        "bridge": (run_bridge, "hf"),
        "bridge-steer-1": (steered(one, "all", "bridge"), "bridge"),
        f"bridge-steer-{n_many}": (steered(many, "all", "bridge"), "bridge"),
        "bridge-tl-generate": (run_tl, "bridge"),
        "plain-hf-copy": (run_copy, "hf"),
    }
    with torch.no_grad():
        # Correctness first: every route and a zero-multiplier hook give the same tokens.
        ref = run_copy()
        for name, fn in (("hf", run_hf), ("bridge", run_bridge)):
            assert torch.equal(fn(), ref), f"{name} generation differs from a never-bridged copy"
        for via in ("hf", "bridge"):
            assert torch.equal(steered(one, "all", via, 0.0)(), ref), f"zero steering ({via}) changed the tokens"
        for fn, _ in settings.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in settings}
        order = list(settings)
        for _ in range(args.rounds):
            rng.shuffle(order)  # a fresh order each round, so no setting always follows the same one
            for name in order:
                fn = settings[name][0]
                sync()
                t0 = clock()
                fn()
                sync()
                times[name].append(clock() - t0)

    n_tokens = len(PROMPTS) * n_new
    best = {k: min(v) for k, v in times.items()}
    over = {k: best[k] / best[base] - 1 for k, (_, base) in settings.items() if base}
    paired = {k: statistics.median(t / b - 1 for t, b in zip(times[k], times[base])) for k, (_, base) in settings.items() if base}
    print(
        f"model {model.model_id} on {model.device}, {len(PROMPTS)} prompts x {n_new} new tokens, greedy, "
        f"{args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}, "
        f"{'process CPU' if on_cpu else 'wall'} seconds"
    )
    print(f"{'setting':20s} {'best s':>8s} {'tokens/s':>9s} {'vs':>8s} {'best/best':>10s} {'paired median':>14s}")
    for name, (_, base) in settings.items():
        cmp = f"{base:>8s} {over[name]:+10.2%} {paired[name]:+14.2%}" if base else ""
        print(f"{name:20s} {best[name]:8.3f} {n_tokens / best[name]:9.1f} {cmp}")
    print(f"noise floor (hf vs hf-again): {over['hf-again']:+.2%}")
    # The same cost measured without the noise of whole generations: one hook call, many times.
    x = torch.randn(len(PROMPTS), 1, model.d_model, device=model.device, dtype=model.dtype)
    add = _adder(torch.randn(model.d_model, device=model.device, dtype=model.dtype), "all", None, "bench")
    for route, extra in (("hf", hook_call_cost(x, add, torch_hook=True)), ("bridge", hook_call_cost(x, add, torch_hook=False))):
        for n_hooks in (1, n_many):
            base = "hf" if route == "hf" else "bridge"
            est = extra * 1e-6 * n_hooks * n_new / best[base]
            print(
                f"{route} route, {n_hooks} hook(s): {extra:.1f} us per hook call x {n_hooks * n_new} calls = "
                f"{est:+.3%} of un-hooked generation"
            )
    for name, (_, base) in settings.items():
        if "steer" in name:
            print(
                f"{name}: steering overhead {over[name]:+.2%} over un-hooked {base} generation "
                f"({'within' if over[name] <= 0.02 else 'ABOVE'} the 2% target)"
            )
    print(
        f"the bridge's own cost: {over['bridge']:+.1%} over the plain modules (geomprobe generates without it); "
        f"a never-bridged copy: {over['plain-hf-copy']:+.1%}"
    )


if __name__ == "__main__":
    main()
