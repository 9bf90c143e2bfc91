"""Cost of geomprobe's activation cache over the bare forward pass, and over the hand-rolled way.

In one run, on the same prompts and batches, each in a fresh process (so peak memory is its own):
  (a) bare forward: the decoder stack over every batch, nothing kept
  (b) geomprobe: cache every layer's resid_post, pooled last + mean, streamed to HDF5
  (c) hand-rolled: output_hidden_states=True, pool, keep in memory, write HDF5 at the end
Prints (b)/(a) (target <= 1.10) and (b)/(c), and peak RSS of (b) at N and 2N prompts
(streaming: it should not grow with N).

    .venv/bin/python benchmarks/cache_overhead.py [--model default] [--prompts 200] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variant(name: str, model_name: str, n_prompts: int, batch_size: int, out_dir: str, queue) -> None:
    import h5py
    import torch

    from geomprobe.activations.collect import _encode_batch, cache_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.models import load_model

    torch.set_grad_enabled(False)
    model = load_model(model_name, device="auto")
    prompts = load_prompt_set("harmful-harmless")
    prompts.prompts = (prompts.prompts * (n_prompts // len(prompts.prompts) + 1))[:n_prompts]
    rendered = prompts.render(model.tokenizer)
    pad = model.tokenizer.pad_token_id
    batches = [range(s, min(s + batch_size, len(rendered))) for s in range(0, len(rendered), batch_size)]
    base = model.hf_model.base_model
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    start_rss = _peak_mib()
    t0 = time.perf_counter()
    if name == "bare":
        for rows in batches:
            ids, mask, _ = _encode_batch(rendered, rows, pad, model.device)
            base(input_ids=ids, attention_mask=mask, use_cache=False)
    elif name == "bare+logits":
        for rows in batches:
            ids, mask, _ = _encode_batch(rendered, rows, pad, model.device)
            model.hf_model(input_ids=ids, attention_mask=mask, use_cache=False)
    elif name == "geomprobe":
        cache_activations(model, prompts, Path(out_dir) / f"g{n_prompts}.h5", poolings="last,mean", batch_size=batch_size)
    elif name == "hand-rolled":
        lasts, means = [], []
        for rows in batches:
            ids, mask, spans = _encode_batch(rendered, rows, pad, model.device)
            hidden = model.hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
            stacked = torch.stack(hidden[1:], 1)  # (b, L, T, d)
            last = mask.sum(1) - 1
            lasts.append(stacked[torch.arange(len(rows)), :, last].cpu())
            pos = torch.arange(ids.shape[1], device=ids.device)
            w = ((pos >= spans[:, :1]) & (pos < spans[:, 1:])).float()
            means.append((torch.einsum("blTd,bT->bld", stacked, w) / w.sum(1)[:, None, None]).cpu())
        with h5py.File(Path(out_dir) / "hand.h5", "w") as f:
            f["last"] = torch.cat(lasts).numpy()
            f["mean"] = torch.cat(means).numpy()
    sync()
    queue.put((time.perf_counter() - t0, _peak_mib(), start_rss))


def run(name: str, args, n_prompts: int, out_dir: str) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_variant, args=(name, args.model, n_prompts, args.batch_size, out_dir, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the variants this many times; best time counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name in ("bare", "geomprobe", "hand-rolled", "bare+logits"):
                seconds, peak, _ = run(name, args, args.prompts, out_dir)
                best[name] = min(best.get(name, float("inf")), seconds)
                (Path(out_dir) / f"g{args.prompts}.h5").unlink(missing_ok=True)
        _, peak_n, base_n = run("geomprobe", args, args.prompts, out_dir)
        _, peak_2n, base_2n = run("geomprobe", args, 2 * args.prompts, out_dir)
    print(
        f"model={args.model} prompts={args.prompts} batch={args.batch_size} "
        "hooks=every resid_post poolings=last,mean dtype=float32"
    )
    for name, seconds in best.items():
        print(f"  {name:<12} {seconds:8.2f} s")
    print(f"(b)/(a) geomprobe / bare forward (decoder stack)      = {best['geomprobe'] / best['bare']:.3f}   target <= 1.10")
    print(f"        geomprobe / bare forward with LM-head logits  = {best['geomprobe'] / best['bare+logits']:.3f}")
    print(f"(b)/(c) geomprobe / hand-rolled output_hidden_states = {best['geomprobe'] / best['hand-rolled']:.3f}")
    print(
        f"peak RSS of geomprobe: {peak_n:.0f} MiB at N={args.prompts}, {peak_2n:.0f} MiB at N={2 * args.prompts} "
        f"(growth {peak_2n - peak_n:+.0f} MiB)"
    )


if __name__ == "__main__":
    main()
