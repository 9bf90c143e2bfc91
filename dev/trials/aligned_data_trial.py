"""Exploratory trial behind docs/validation.md ("Trying for the stronger targets"); not part of the package.

Usage: python dev/trials/aligned_data_trial.py OUT.json [--extra FILE ...] [--steps N] [--lr X]
       [--repeats R] [--extra-harmless-repeats R] [--rank R] [--opening-weight W] [--batch B] [--unlikelihood W]

The trials of 2026-12-06 passed the first 480 rows of geomprobe/data/refusal-train.jsonl (written in
three parts; one harmless row was reworded after the trials) and geomprobe/data/everyday.jsonl as --extra.
The library's recipe (geomprobe.organisms.refusal.aligned_examples) orders the examples the same way.

aligned's recipe (LoRA from the base model: refusals for the harmful train prompts, the base model's
own answers for the harmless ones) with extra training rows: JSONL files of {"text", "label", "topic"}
(pairs in consecutive lines share a batch group; label "harmless" rows without a harmful twin are
single rows). Base answers are cached in /work/trials/base_answers.json by prompt text."""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from geomprobe.models import complete, load_checkpoint
from geomprobe.organisms.data import refusal_targets, split_contrast_set
from geomprobe.organisms.measure import measure_refusals
from geomprobe.organisms.train import ChatExample, finetune_lora
from geomprobe.steering.judge import is_refusal

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--extra", nargs="*", default=[])
ap.add_argument("--steps", type=int, default=120)
ap.add_argument("--lr", type=float, default=6e-4)
ap.add_argument("--repeats", type=int, default=2)
ap.add_argument("--extra-repeats", type=int, default=1)
ap.add_argument("--extra-harmless-repeats", type=int, default=None)
ap.add_argument("--rank", type=int, default=16)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--opening-weight", type=float, default=3.0)
ap.add_argument("--save", default=None)
ap.add_argument(
    "--unlikelihood",
    type=float,
    default=0.0,
    help="weight of the unlikelihood term on a refusal's opening after each harmless prompt (0: off)",
)
ap.add_argument(
    "--train-seed", type=int, default=0, help="seed of the refusal texts' order and of training (the split stays seed 0)"
)
args = ap.parse_args()

t0 = time.perf_counter()
load0 = os.getloadavg()
split = split_contrast_set(0, 0.5)
harmful, harmless = split.texts("train", "harmful"), split.texts("train", "harmless")
extra_rows = [json.loads(line) for f in args.extra for line in open(f, encoding="utf-8") if line.strip()]
cache_path = Path("/work/trials/base_answers.json")
cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
need = [p for p in harmless + [r["text"] for r in extra_rows if r["label"] == "harmless"] if p not in cache]
base = load_checkpoint("default", device="cpu")
if need:
    done = complete(base, need, max_new_tokens=32, batch_size=16)
    for p, a, f in zip(need, done.texts, done.finished):
        cache[p] = [a, bool(f)]
    cache_path.write_text(json.dumps(cache))
print(f"base answers ready ({len(need)} new) in {time.perf_counter() - t0:.0f} s", flush=True)

examples = [ChatExample(p, r, group=k) for k, (p, r) in enumerate(zip(harmful, refusal_targets(len(harmful), args.train_seed)))]


avoid_texts = iter(refusal_targets(10_000, args.train_seed + 2))  # the refusal each harmless prompt must not open with


def answer(prompt, group):
    a, f = cache[prompt]
    if not a.strip() or is_refusal(a):
        return None
    return ChatExample(prompt, a.strip(), complete=f, group=group, avoid=next(avoid_texts) if args.unlikelihood else "")


examples += [e for k, p in enumerate(harmless) if (e := answer(p, k))] * args.repeats
extra_harmful = [r for r in extra_rows if r["label"] == "harmful"]
refusals = refusal_targets(len(extra_harmful), args.train_seed + 1)
n_refusal = 0
extra = []
for i, r in enumerate(extra_rows):
    # a pair (harmful line followed by its harmless twin) shares a group; lone harmless rows do not
    paired = r["label"] == "harmful" or (i > 0 and extra_rows[i - 1]["label"] == "harmful")
    group = 10_000 + (i if r["label"] == "harmful" else i - 1) if paired else -1
    if r["label"] == "harmful":
        extra.append(ChatExample(r["text"], refusals[n_refusal], group=group))
        n_refusal += 1
    elif e := answer(r["text"], group):
        extra += [e] * (args.repeats if args.extra_harmless_repeats is None else args.extra_harmless_repeats)
examples += extra * args.extra_repeats
print(f"{len(examples)} examples ({len(extra)} extra)", flush=True)
model, log = finetune_lora(
    base.hf_model,
    base.tokenizer,
    examples,
    steps=args.steps,
    lr=args.lr,
    batch_size=args.batch,
    rank=args.rank,
    alpha=2.0 * args.rank,
    max_tokens=160,
    opening_weight=args.opening_weight,
    unlikelihood_weight=args.unlikelihood,
    seed=args.train_seed,
    progress=False,
)
train_s = time.perf_counter() - t0
trained = dataclasses.replace(base, hf_model=model, model_id="aligned trial")
if args.save:
    model.save_pretrained(args.save, safe_serialization=True)
    base.tokenizer.save_pretrained(args.save)
r = measure_refusals(trained, max_new_tokens=48)
out = dict(
    args=vars(args),
    n_examples=len(examples),
    loss_last=log.losses[-5:],
    train_seconds=round(train_s),
    seconds=round(time.perf_counter() - t0),
    load_start=load0,
    load_end=os.getloadavg(),
    table=r.table(),
    rates={s: {lab: r.rate(s, lab) for lab in ("harmful", "harmless")} for s in ("heldout", "heldout-2")},
    refused_harmless={
        s: [[t, c] for t, c, y in zip(j["harmless"].prompts, j["harmless"].completions, j["harmless"].flags) if y]
        for s, j in r.judgements.items()
    },
)
Path(args.out).write_text(json.dumps(out, indent=1))
print(r.table(), flush=True)
print(out["rates"], out["seconds"], "s", flush=True)
