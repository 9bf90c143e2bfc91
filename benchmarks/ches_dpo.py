"""CHES and likelihood displacement: DPO on the highest- and on the lowest-CHES third of a preference set (issue 22).

A miniature of the experiment in Razin et al., "Unintentional Unalignment: Likelihood Displacement in
Direct Preference Optimization" (ICLR 2025). Their prediction: DPO on pairs with a high CHES score
displaces likelihood, so the chosen response's log-probability falls, or rises less, than under DPO
on pairs with a low score; on refusal data the model then refuses less.

1. CHES of every pair of the preference set (default: the bundled ``preferences``, 80 pairs) under
   the model, at its last hidden layer (``final``), ranked by ``--rank-by`` (default ``ches``).
2. The top ``n // 3`` pairs and the bottom ``n // 3`` pairs are the two training sets.
3. From the same base model, DPO with LoRA (trl's DPOTrainer, geomprobe.organisms.dpo.train_dpo) on
   each third: equal steps, batch size, learning rate, beta, LoRA settings and seed.
4. (a) Per trained pair, the change in the summed log-probability of the chosen and of the rejected
   response (tokens as CHES renders them, end-of-turn included), after minus before; the mean per
   third with a percentile-bootstrap interval over pairs, and high - low with an interval from
   resampling each third within itself.
   (b) The refusal judge's rate on held-out harmful prompts (default ``heldout-2``: topics absent from
   the contrast set the preference prompts come from) for the base model and both trained models,
   each with its interval, and high - low paired over the same prompts.

The printed verdict is "reproduced" only when the interval of high - low lies wholly below 0.

Usage::

    python benchmarks/ches_dpo.py --json ches_dpo.json --markdown ches_dpo.md        # the full run (~8 min, 2 CPU cores)
    python benchmarks/ches_dpo.py --quick --model TINY_FOLDER                          # pipeline check, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from typing import Any

import numpy as np

# The full run; --quick replaces these (pipeline check only: too small to mean anything).
FULL = {"limit": None, "steps": 24, "batch_size": 4, "refusal_limit": None, "max_new_tokens": 48, "n_boot": 2000}
QUICK = {"limit": 9, "steps": 2, "batch_size": 2, "refusal_limit": 2, "max_new_tokens": 4, "n_boot": 100}
THIRDS = ("high", "low")
PREDICTION = (
    "DPO on the high-CHES third lowers the chosen responses' log-probability more (or raises it less) than DPO on the "
    "low-CHES third, and leaves the model refusing fewer held-out harmful prompts"
)


def verdict(interval: dict[str, float]) -> str:
    """'reproduced' (high - low wholly below 0, as predicted), 'opposite' (wholly above) or 'not resolved'."""
    if interval["ci_high"] < 0:
        return "reproduced"
    if interval["ci_low"] > 0:
        return "opposite"
    return "not resolved"


def verdict_line(what: str, interval: dict[str, float], unit: str, scale: float = 1.0) -> str:
    est, lo, hi = (scale * interval[k] for k in ("estimate", "ci_low", "ci_high"))
    word = verdict(interval)
    plain = {
        "reproduced": "YES, the prediction reproduced",
        "opposite": "NO, the opposite of the prediction (the interval lies above 0)",
        "not resolved": "NO, not shown (the interval includes 0)",
    }[word]
    return f"{what}: high - low = {est:+.3g} {unit} [95% CI {lo:+.3g}, {hi:+.3g}]: {plain}"


def third_record(name, idx, ches, enc, before, after, log, judged, n_boot, seed) -> dict[str, Any]:
    from geomprobe.organisms.dpo import mean_interval

    bc, br = before[0][idx], before[1][idx]
    ac, ar = after
    dc, dr = ac - bc, ar - br
    n_tokens = np.array([len(enc[i].chosen_ids) for i in idx], dtype=np.float64)
    pairs = []
    for k, i in enumerate(idx):
        pairs.append(
            {
                "index": int(i),
                "prompt": ches.prompts[i],
                "kind": (ches.sources[i] if ches.sources else {}).get("kind", ""),
                "ches": float(ches.ches[0, i]),
                "ln_ches": float(ches.ln_ches[0, i]),
                "n_chosen_tokens": len(enc[i].chosen_ids),
                "n_rejected_tokens": len(enc[i].rejected_ids),
                "chosen_before": float(bc[k]),
                "chosen_after": float(ac[k]),
                "chosen_change": float(dc[k]),
                "rejected_before": float(br[k]),
                "rejected_after": float(ar[k]),
                "rejected_change": float(dr[k]),
            }
        )
    return {
        "name": f"{name}-CHES third",
        "n_pairs": len(idx),
        "pairs": pairs,
        "chosen_change": mean_interval(dc, n_bootstrap=n_boot, seed=seed).to_dict(),
        "rejected_change": mean_interval(dr, n_bootstrap=n_boot, seed=seed).to_dict(),
        "margin_change": mean_interval(dc - dr, n_bootstrap=n_boot, seed=seed).to_dict(),
        "chosen_change_per_token": mean_interval(dc / n_tokens, n_bootstrap=n_boot, seed=seed).to_dict(),
        "share_chosen_fell": float((dc < 0).mean()),
        "train": log.to_dict(),
        "refusal": judged.to_dict(include_text=True),
    }


def differences(records: dict[str, dict], judged: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    from geomprobe.core.stats import paired_bootstrap
    from geomprobe.organisms.dpo import difference_interval

    def changes(name: str, key: str) -> np.ndarray:
        pairs = records[name]["pairs"]
        if key == "chosen_change_per_token":
            return np.array([p["chosen_change"] / p["n_chosen_tokens"] for p in pairs])
        return np.array([p[key] for p in pairs])

    out: dict[str, Any] = {
        key: difference_interval(changes("high", key), changes("low", key), n_bootstrap=n_boot, seed=seed).to_dict()
        for key in ("chosen_change", "rejected_change", "chosen_change_per_token")
    }
    high, low = (np.asarray(judged[n].flags, dtype=np.float64) for n in THIRDS)
    paired = paired_bootstrap(lambda rows: (low[rows].mean(), high[rows].mean()), len(high), n_bootstrap=n_boot, seed=seed)
    out["refusal_rate"] = {"estimate": paired.delta, "ci_low": paired.low, "ci_high": paired.high, "p_value": paired.p_value}
    return out


def fmt_interval(iv: dict[str, float], digits: int = 2) -> str:
    return f"{iv['estimate']:+.{digits}f} [{iv['ci_low']:+.{digits}f}, {iv['ci_high']:+.{digits}f}]"


def fmt_rate(j: dict[str, Any]) -> str:
    return f"{100 * j['rate']:.0f}% ({j['n_refused']}/{j['n']}) [{100 * j['ci'][0]:.0f}-{100 * j['ci'][1]:.0f}%]"


def tables(payload: dict[str, Any]) -> str:
    rec, diff, base = payload["thirds"], payload["difference_high_minus_low"], payload["base_refusal"]
    s = payload["settings"]
    head = (
        "| trained on | pairs | CHES range | near-dup. | Δ log p(chosen) [95% CI] | Δ log p(rejected) [CI] | Δ margin [CI] "
        "| Δ log p(chosen) per token [CI] | chosen fell | refused (held-out harmful) [CI] |"
    )
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in THIRDS:
        r = rec[name]
        scores = [p[s["rank_by"]] for p in r["pairs"]]
        near = sum(p["kind"] == "near-duplicate" for p in r["pairs"])
        lines.append(
            f"| {r['name']} | {r['n_pairs']} | {min(scores):.4g} to {max(scores):.4g} | {near} "
            f"| {fmt_interval(r['chosen_change'])} | {fmt_interval(r['rejected_change'])} | {fmt_interval(r['margin_change'])} "
            f"| {fmt_interval(r['chosen_change_per_token'], 3)} | {100 * r['share_chosen_fell']:.0f}% "
            f"| {fmt_rate(r['refusal'])} |"
        )
    rr = diff["refusal_rate"]
    lines.append(
        f"| high - low | | | | {fmt_interval(diff['chosen_change'])} | {fmt_interval(diff['rejected_change'])} | | "
        f"{fmt_interval(diff['chosen_change_per_token'], 3)} | | {100 * rr['estimate']:+.0f} pts "
        f"[{100 * rr['ci_low']:+.0f}, {100 * rr['ci_high']:+.0f}] (paired) |"
    )
    lines.append(f"| base model (untrained) | | | | | | | | | {fmt_rate(base)} |")
    v = payload["verdict"]
    return "\n".join(
        [
            f"DPO with LoRA on the highest and lowest {s['rank_by']} thirds of {s['preferences']} ({s['n_pairs']} pairs) "
            f"under {s['model_id']}; {s['dpo']['steps']} steps of {s['dpo']['batch_size']} pairs each, lr {s['dpo']['lr']:g}, "
            f"beta {s['dpo']['beta']:g}, LoRA rank {s['dpo']['lora_rank']}, seed {s['dpo']['seed']}. Log-probabilities are "
            "sums over each response's tokens (end-of-turn included), after minus before, on the pairs each model "
            f"trained on; refusals on {s['n_refusal_prompts']} held-out harmful prompts ({s['refusal_set']}), "
            f"{s['max_new_tokens']} greedy tokens.",
            "",
            *lines,
            *(["", "--quick: a pipeline check with tiny sizes; these numbers mean nothing."] if s["quick"] else []),
            "",
            f"Prediction (Razin et al.): {PREDICTION}.",
            "",
            f"- {v['likelihood_line']}",
            f"- {v['refusal_line']}",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--model", default="default", help="base model: 'default' or a folder (a tiny test model, say)")
    ap.add_argument("--preferences", default="preferences", help="bundled set name or a JSONL file of pairs")
    ap.add_argument("--limit", type=int, help="N pairs spread evenly over the file (default: all; --quick: 9)")
    ap.add_argument("--rank-by", default="ches", choices=("ches", "ln_ches"), help="score that splits the thirds")
    ap.add_argument("--steps", type=int, help=f"DPO steps per third (default {FULL['steps']})")
    ap.add_argument("--batch-size", type=int, help=f"pairs per step (default {FULL['batch_size']})")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--seed", type=int, default=0, help="DPO seed (LoRA init, batch order) and bootstrap seed")
    ap.add_argument("--refusal-set", default="heldout-2", choices=("heldout-2", "heldout"), help="held-out harmful prompts")
    ap.add_argument("--refusal-limit", type=int, help="first N held-out harmful prompts (default: all)")
    ap.add_argument("--max-new-tokens", type=int, help=f"greedy tokens per judged reply (default {FULL['max_new_tokens']})")
    ap.add_argument("--n-boot", type=int, help=f"bootstrap replicates (default {FULL['n_boot']})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, measures nothing")
    ap.add_argument("--progress", action="store_true", help="progress bars for DPO and judging")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--markdown", help="write the table and verdict here")
    ap.add_argument("--save-models", help="folder to save the two trained models in (high-ches/, low-ches/)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run(args: argparse.Namespace) -> int:
    import torch

    from geomprobe.ches import ches_scores, load_preferences
    from geomprobe.core.device import resolve_device
    from geomprobe.core.errors import GeomprobeError
    from geomprobe.core.io import Output, atomic_write_text, check_outputs, write_json
    from geomprobe.models import load_checkpoint, load_model
    from geomprobe.organisms import heldout_prompts
    from geomprobe.organisms.context import save_checkpoint
    from geomprobe.organisms.dpo import DPOSettings, encode_pairs, sequence_logprobs, split_thirds, train_dpo
    from geomprobe.steering.judge import judge_refusals

    json_path, md_path, save_dir = check_outputs(
        [
            Output(args.json, "--json", suffixes=(".json",)),
            Output(args.markdown, "--markdown", suffixes=(".md", ".txt", "")),
            Output(args.save_models, "--save-models", kind="folder", owns=("high-ches", "low-ches")),
        ],
        overwrite=args.overwrite,
    )
    settings = DPOSettings(args.steps, args.batch_size, args.lr, args.beta, args.lora_rank, args.lora_alpha, args.seed)
    load_start = os.getloadavg()[0]
    clock, t0 = {}, time.perf_counter()

    def lap(name: str, since: float) -> float:
        clock[name] = round(time.perf_counter() - since, 1)
        print(f"  {name}: {clock[name]:.0f} s", flush=True)
        return time.perf_counter()

    prefs = load_preferences(args.preferences, args.limit)
    print(f"CHES of {len(prefs)} pairs ({prefs.name}) under {args.model}, layer final", flush=True)
    lm = load_model(args.model, device=args.device)
    ches = ches_scores(lm, prefs, layers=["final"])
    high, low = split_thirds(ches.scores(args.rank_by))
    del lm
    gc.collect()
    t = lap("ches", t0)

    base = load_checkpoint(args.model, device=args.device)
    enc = encode_pairs(base.tokenizer, prefs)
    # The measured tokens are the ones CHES summed over: one term per response token, end-of-turn included.
    if [len(e.chosen_ids) for e in enc] != ches.n_chosen.tolist() or [
        len(e.rejected_ids) for e in enc
    ] != ches.n_rejected.tolist():
        raise GeomprobeError("the DPO tokens do not match the positions CHES summed over; report this as a bug")
    trained_idx = np.concatenate([high, low])  # only the trained pairs are measured (the middle third is never used)
    before = (np.full(len(enc), np.nan), np.full(len(enc), np.nan))
    before[0][trained_idx], before[1][trained_idx] = sequence_logprobs(base.hf_model, [enc[i] for i in trained_idx])
    trained_prompts = {p.prompt.strip() for p in prefs.pairs}
    all_prompts = heldout_prompts(sets=[args.refusal_set])[args.refusal_set]["harmful"]
    prompts = [p for p in all_prompts if p.strip() not in trained_prompts][: args.refusal_limit]
    if not prompts:
        raise GeomprobeError(f"no held-out harmful prompts left in {args.refusal_set} after removing the trained ones")
    judge = dict(max_new_tokens=args.max_new_tokens, n_bootstrap=args.n_boot, seed=args.seed, progress=args.progress)
    judged = {"base": judge_refusals(base, prompts, **judge)}
    model_id = base.model_id
    del base
    gc.collect()
    t = lap("base log-probs and refusals", t)

    records, logs = {}, {}
    for name, idx in zip(THIRDS, (high, low)):
        ckpt = load_checkpoint(args.model, device=args.device)
        subset = [enc[i] for i in idx]
        reference = (before[0][idx], before[1][idx])  # the untrained model's log-probs: DPO's reference
        model, logs[name] = train_dpo(
            ckpt.hf_model, ckpt.tokenizer, subset, settings, reference=reference, progress=args.progress, desc=name
        )
        t = lap(f"DPO on the {name}-CHES third ({len(idx)} pairs, {settings.steps} steps)", t)
        after = sequence_logprobs(model, subset)
        trained = dataclasses.replace(ckpt, hf_model=model, model_id=f"{ckpt.model_id} + DPO on the {name}-CHES third")
        judged[name] = judge_refusals(trained, prompts, **judge)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(model, ckpt.tokenizer, save_dir / f"{name}-ches")
        records[name] = third_record(name, idx, ches, enc, before, after, logs[name], judged[name], args.n_boot, args.seed)
        del ckpt, model, trained
        gc.collect()
        t = lap(f"{name}-CHES model: log-probs and refusals", t)

    diff = differences(records, judged, args.n_boot, args.seed)
    payload: dict[str, Any] = {
        "settings": {
            "model": args.model,
            "model_id": model_id,
            "preferences": prefs.name,
            "preferences_sha256": prefs.sha256,
            "n_pairs": len(prefs),
            "limit": args.limit,
            "rank_by": args.rank_by,
            "layer": "final",
            "dpo": {**dataclasses.asdict(settings), "loss": "sigmoid", "reference": "the base model (LoRA adapter off)"},
            "refusal_set": args.refusal_set,
            "n_refusal_prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "n_boot": args.n_boot,
            "quick": args.quick,
            "device": str(resolve_device(args.device)),
            "torch_threads": torch.get_num_threads(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
        },
        "ches": ches.to_dict(by=args.rank_by),
        "split": {"high": [int(i) for i in high], "low": [int(i) for i in low]},
        "thirds": records,
        "base_refusal": judged["base"].to_dict(include_text=True),
        "difference_high_minus_low": diff,
        "prediction": PREDICTION,
        "verdict": {
            "likelihood": verdict(diff["chosen_change"]),
            "refusal": verdict(diff["refusal_rate"]),
            "likelihood_line": verdict_line("Likelihood displacement (change in log p(chosen))", diff["chosen_change"], "nats"),
            "refusal_line": verdict_line("Refusal rate on held-out harmful prompts", diff["refusal_rate"], "points", 100.0),
        },
        "seconds": {**clock, "total": round(time.perf_counter() - t0, 1)},
    }
    text = tables(payload)
    print("\n" + text + f"\n\ntotal {payload['seconds']['total']:.0f} s", flush=True)
    if json_path is not None:
        write_json(json_path, payload)
    if md_path is not None:
        atomic_write_text(md_path, text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from geomprobe.core.errors import GeomprobeError

    args = parse_args(argv)
    try:
        return run(args)
    except GeomprobeError as exc:
        print(f"ches_dpo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
