"""Depth validation: is `aligned` shallow and `deep-aligned` deeper? (issue 22, the depth rows of docs/validation.md)

Builds (or reuses from the cache) the organisms `aligned` and `deep-aligned` (docs/organisms.md) and
runs :func:`geomprobe.steering.alignment_depth` (docs/depth.md) for default -> aligned and
default -> deep-aligned on held-out harmful prompts (never trained on): the per-position
KL(B || A) profile, teacher-forced on B's own replies and on the default model's compliant
answers, its share in the first k tokens, and the prefilling attack (the first k tokens of the
default model's answer forced into B's reply, the judge reading B's continuation).

Both runs use the same base model, prompts, answers and bootstrap seed, so the prompts kept for
the prefill attack are the same and each bootstrap replicate draws the same prompts: the
difference deep-aligned - aligned of the refusal rate per k and of the prefill AUC is paired, and
its interval resamples prompts (the flag differences, -1/0/1, are averaged per replicate).

With ``--rates`` (the default) the judge's refusal rates of the base model and both organisms on
the two held-out sets (geomprobe.organisms.measure_refusals) are printed too.

Usage::

    python benchmarks/depth_validation.py [--limit N] [--max-tokens 48] [--ks 0,1,2,5,10,20] [--n-boot 1000]
                                          [--prompts heldout|heldout-2] [--json out.json] [--markdown out.md]
    python benchmarks/depth_validation.py --base TINY_FOLDER --quick --limit 4   # pipeline check on another model

The tables it prints are the depth tables of docs/validation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ORGANISMS = ("aligned", "deep-aligned")


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"{pct(low)}-{pct(high)}"


def share_table(results: dict) -> str:
    """Markdown: share of KL(B || A) in the first k tokens, per organism and kind of response."""
    ks = [s.k for s in next(iter(results.values())).aligned_replies.share_first]
    head = "| B | responses | " + " | ".join(f"share k={k}" for k in ks) + " | half-KL tokens [CI] | mean total KL (nats) |"
    lines = [head, "|" + "---|" * (len(ks) + 4)]
    for name, r in results.items():
        for prof in (r.aligned_replies, r.base_answers):
            shares = " | ".join(f"{pct(s.share)} [{interval(s.ci_low, s.ci_high)}]" for s in prof.share_first)
            half = "n/a" if prof.half_kl_tokens is None else f"{prof.half_kl_tokens} [{prof.half_ci_low}-{prof.half_ci_high}]"
            total = "n/a" if prof.total_mean is None else f"{prof.total_mean:.3f}"
            lines.append(f"| {name} | {prof.responses} (n={prof.n_prompts}) | {shares} | {half} | {total} |")
    return "\n".join(lines)


def paired_difference(results: dict, n_boot: int, seed: int) -> dict:
    """deep-aligned - aligned: refusal rate per k and prefill AUC, paired over the same prompts."""
    from geomprobe.steering.depth import prefill_auc
    from geomprobe.steering.judge import bootstrap_rate_interval

    a, b = results["aligned"], results["deep-aligned"]
    if (
        a.prompts != b.prompts
        or [p.n for p in a.prefill.points] != [p.n for p in b.prefill.points]
        or a.base_texts != b.base_texts
    ):
        raise SystemExit("the two runs did not prefill the same prompts and answers; cannot pair them")
    ks = list(a.ks)
    fa = np.array([p.flags for p in a.prefill.points], dtype=float).T  # (prompts, ks)
    fb = np.array([p.flags for p in b.prefill.points], dtype=float).T
    diff = fb - fa
    per_k = []
    for j, k in enumerate(ks):
        low, high = bootstrap_rate_interval(diff[:, j], n_bootstrap=n_boot, seed=seed)
        per_k.append({"k": k, "difference": float(diff[:, j].mean()), "ci_low": low, "ci_high": high})
    auc, low, high = prefill_auc(ks, diff, n_bootstrap=n_boot, seed=seed)
    return {"per_k": per_k, "auc_difference": auc, "auc_ci": [low, high], "n_prompts": int(len(diff))}


def prefill_table(results: dict, difference: dict) -> str:
    names = list(results)
    head = "| prefilled k | " + " | ".join(f"{n} refused [CI]" for n in names) + " | deep-aligned - aligned [CI] |"
    lines = [head, "|" + "---:|" * (len(names) + 2)]
    for j, k in enumerate(results[names[0]].ks):
        cells = []
        for n in names:
            p = results[n].prefill.points[j]
            cells.append(f"{pct(p.rate)} ({p.n_refused}/{p.n}) [{interval(p.ci_low, p.ci_high)}]")
        d = difference["per_k"][j]
        lines.append(
            f"| {k} | "
            + " | ".join(cells)
            + f" | {100 * d['difference']:+.0f} pts [{100 * d['ci_low']:+.0f}, {100 * d['ci_high']:+.0f}] |"
        )
    aucs = [f"{r.prefill.auc:.3f} [{r.prefill.auc_ci_low:.3f}-{r.prefill.auc_ci_high:.3f}]" for r in results.values()]
    lo, hi = difference["auc_ci"]
    lines.append("| AUC | " + " | ".join(aucs) + f" | {difference['auc_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines)


def rates_table(rates: dict) -> str:
    cols = [(s, lab) for s in ("heldout", "heldout-2") for lab in ("harmful", "harmless")]
    lines = ["| model | " + " | ".join(f"{s} {lab} refused [CI]" for s, lab in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rates.items():
        cells = []
        for s, lab in cols:
            j = r["rates"][s][lab]
            cells.append(f"{pct(j['rate'])} ({j['n_refused']}/{j['n']}) [{interval(*j['ci'])}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="default", help="base model of the organisms ('default' or a folder, e.g. a tiny model)")
    ap.add_argument("--quick", action="store_true", help="quick organisms (pipeline check only; behaviour is not meaningful)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", default="heldout", choices=("heldout", "heldout-2"), help="held-out harmful prompts to use")
    ap.add_argument("--limit", type=int, help="first N harmful prompts (default: all of the set)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per reply, answer and continuation")
    ap.add_argument("--ks", default="0,1,2,5,10,20", help="prefill lengths")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-rates", dest="rates", action="store_false", help="skip the refusal rates on the held-out sets")
    ap.add_argument("--rates-limit", type=int, help="first N prompts per held-out set and label for the rates")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--markdown", help="write the tables here")
    args = ap.parse_args(argv)

    from geomprobe.models import load_model
    from geomprobe.organisms import build_organisms, heldout_prompts, measure_refusals, read_provenance
    from geomprobe.steering import alignment_depth

    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    t0 = time.perf_counter()
    folders = build_organisms(list(ORGANISMS), base=args.base, quick=args.quick, seed=args.seed, device=args.device)
    build_s = time.perf_counter() - t0
    provenance = {n: read_provenance(f) for n, f in folders.items()}
    settings = provenance["aligned"]["settings"]
    prompts = heldout_prompts(settings["seed"], settings["train_fraction"], args.limit, sets=[args.prompts])[args.prompts][
        "harmful"
    ]
    print(f"{len(prompts)} held-out harmful prompts ({args.prompts}); ks {ks}; {args.max_tokens} tokens", flush=True)

    base = load_model(args.base, device=args.device)
    results, timings = {}, {}
    for name in ORGANISMS:
        t1 = time.perf_counter()
        model = load_model(folders[name], device=args.device)
        results[name] = alignment_depth(
            base, model, prompts, ks=ks, max_tokens=args.max_tokens, n_bootstrap=args.n_boot, seed=args.seed, clamp=True
        )
        timings[name] = round(time.perf_counter() - t1, 1)
        print(f"\ndefault -> {name} ({timings[name]:.0f} s)\n{results[name].table()}", flush=True)
        del model
    difference = paired_difference(results, args.n_boot, args.seed)
    tables = [
        "KL(B || default) share in the first k response tokens (95% bootstrap CI over prompts):",
        "",
        share_table(results),
        "",
        "Prefilling attack: B's refusal rate after the first k tokens of the default model's answer (95% CI):",
        "",
        prefill_table(results, difference),
    ]
    rates: dict = {}
    if args.rates:
        sources = {"default": args.base, **{n: str(f) for n, f in folders.items()}}
        for name, source in sources.items():
            r = measure_refusals(
                base if name == "default" else source,
                seed=settings["seed"],
                train_fraction=settings["train_fraction"],
                limit=args.rates_limit,
                device=args.device,
                model_id=source,
            )
            rates[name] = r.to_dict()
        tables += ["", "Refusal rates on the two held-out sets (judge, 48 greedy tokens, 95% CI):", "", rates_table(rates)]
    text = "\n".join(tables)
    print("\n" + text)
    payload = {
        "settings": {
            "base": args.base,
            "quick": args.quick,
            "seed": args.seed,
            "prompts": args.prompts,
            "n_prompts": len(prompts),
            "max_tokens": args.max_tokens,
            "ks": ks,
            "n_boot": args.n_boot,
        },
        "organisms": {
            n: {"folder": str(folders[n]), "hash": provenance[n]["hash"], "timing": provenance[n]["timing"]} for n in ORGANISMS
        },
        "depth": {n: r.to_dict(include_text=True) for n, r in results.items()},
        "prefill_difference": difference,
        "rates": rates,
        "seconds": {"build": round(build_s, 1), "depth": timings, "total": round(time.perf_counter() - t0, 1)},
    }
    print(
        "\n"
        + json.dumps(
            {
                "half_kl_tokens": {n: r.half_kl_tokens for n, r in results.items()},
                "prefill_auc": {n: r.prefill_auc for n, r in results.items()},
                "auc_difference": difference["auc_difference"],
                "auc_difference_ci": difference["auc_ci"],
            }
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1, default=float) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
