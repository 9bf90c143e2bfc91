"""Exploratory trial behind docs/validation.md ("Trying for the stronger targets"); not part of the package.

Usage: python dev/trials/aligned_dpo_trial.py ALIGNED_FOLDER [STEPS] [LR]

Aligned + a DPO stage on train-split pairs (harmless: base answer over refusal;
harmful: refusal over base answer). Does a loss that penalises refusing harmless prompts lower
the harmless refusal rate on both held-out sets? Not a default recipe; a trial for the docs."""

import dataclasses
import json
import os
import sys
import time

from geomprobe.ches.data import PreferencePair, PreferenceSet
from geomprobe.core.errors import GeomprobeError
from geomprobe.models import complete, load_checkpoint
from geomprobe.organisms.data import REFUSAL_TEXTS, split_contrast_set
from geomprobe.organisms.dpo import DPOSettings, encode_pairs, sequence_logprobs, train_dpo
from geomprobe.organisms.measure import measure_refusals
from geomprobe.steering.judge import is_refusal

aligned = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
t0 = time.perf_counter()
load0 = os.getloadavg()
split = split_contrast_set(0, 0.5)
harmful, harmless = split.texts("train", "harmful"), split.texts("train", "harmless")
base = load_checkpoint("default", device="cpu")
answers = {lab: complete(base, texts, max_new_tokens=32).texts for lab, texts in (("harmful", harmful), ("harmless", harmless))}
pairs = []
for i, (p, a) in enumerate(zip(harmful, answers["harmful"])):
    if not is_refusal(a):
        pairs.append(PreferencePair(p, REFUSAL_TEXTS[i % len(REFUSAL_TEXTS)], a.strip(), f"harmful {i}"))
for i, (p, a) in enumerate(zip(harmless, answers["harmless"])):
    if not is_refusal(a):
        pairs.append(PreferencePair(p, a.strip(), REFUSAL_TEXTS[i % len(REFUSAL_TEXTS)], f"harmless {i}"))
print(
    f"{len(pairs)} pairs ({sum(p.where.startswith('harmless') for p in pairs)} harmless) in {time.perf_counter() - t0:.0f} s",
    flush=True,
)
ck = load_checkpoint(aligned, device="cpu")
enc = []
for pair in pairs:
    try:
        enc += encode_pairs(ck.tokenizer, PreferenceSet("train-pairs", [pair], ""))
    except GeomprobeError as exc:  # a response starting with punctuation can tokenise into the prompt
        print("skipped", pair.where, exc, flush=True)
print(len(enc), "pairs encoded", flush=True)
ref = sequence_logprobs(ck.hf_model, enc)
model, log = train_dpo(ck.hf_model, ck.tokenizer, enc, DPOSettings(steps=steps, lr=lr), reference=ref, progress=True)
trained = dataclasses.replace(ck, hf_model=model, model_id=f"aligned + DPO {steps} steps lr {lr}")
r = measure_refusals(trained, max_new_tokens=48)
out = dict(
    steps=steps,
    lr=lr,
    n_pairs=len(pairs),
    seconds=round(time.perf_counter() - t0),
    dpo_seconds=log.seconds,
    load_start=load0,
    load_end=os.getloadavg(),
    table=r.table(),
    rates={s: {lab: r.rate(s, lab) for lab in ("harmful", "harmless")} for s in ("heldout", "heldout-2")},
)
print(json.dumps(out, indent=1), flush=True)
