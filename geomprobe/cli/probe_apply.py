"""``geomprobe probe tokens`` and ``probe score``: apply a saved probe to a cache's tokens or to new text."""

from __future__ import annotations

import argparse
from pathlib import Path

from geomprobe.cli.common import check_command_outputs, write_json
from geomprobe.core.errors import GeomprobeError


def token_decoder(folder: str | None):
    if folder is None:
        return lambda ids: [f"[{int(i)}]" for i in ids]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GeomprobeError(
            f"cannot load a tokenizer from {folder!r} ({type(exc).__name__}); pass a model folder or omit --tokenizer"
        ) from None
    return lambda ids: [tok.decode([int(i)]) for i in ids]


def run_tokens(args: argparse.Namespace) -> int:
    from geomprobe.plots.probes import token_scores_html
    from geomprobe.probes import load_probe, token_scores

    check_command_outputs(args)
    probes = load_probe(args.probe_dir)
    hook = args.hook
    if hook is None:
        from geomprobe.probes.selection import chosen_hook

        hook = chosen_hook(probes, eval_rows="all", eval_cache=Path(args.cache).name)[0] or probes.hooks[len(probes.hooks) // 2]
    rows = args.rows
    if rows is None:
        from geomprobe.activations.store import open_cache

        with open_cache(args.cache) as c:
            rows = list(range(min(20, c.n_prompts)))
    scored = token_scores(probes, args.cache, hook, rows=rows, allow_model_mismatch=args.allow_model_mismatch)
    decode = token_decoder(args.tokenizer)
    token_scores_html(
        [decode(t.token_ids) for t in scored],
        [t.scores for t in scored],
        args.html,
        response_start=[t.response_start for t in scored],
        labels=[t.label for t in scored],
        title=f"{probes.method} probe token scores at {hook} ({probes.model_id})",
    )
    for t in scored:
        print(
            f"row {t.row:<5} {t.label:<12} response mean {t.response_mean:8.3f}  max "
            f"{t.scores[t.response_start :].max() if len(t.scores) > t.response_start else float('nan'):8.3f}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "hook": hook,
                "layer": probes.layers[probes.index(hook)],
                "pooling": "all",
                "rows": [
                    {
                        "row": t.row,
                        "label": t.label,
                        "response_start": t.response_start,
                        "response_mean": t.response_mean,
                        "token_ids": t.token_ids,
                        "scores": t.scores,
                    }
                    for t in scored
                ],
            },
        )
    return 0


def run_score(args: argparse.Namespace) -> int:
    from geomprobe.probes import check_compatible, load_probe

    check_command_outputs(args)
    probes = load_probe(args.probe_dir)
    try:
        from geomprobe.activations.collect import pooled_activations
    except ImportError:
        raise GeomprobeError("probe score needs geomprobe.activations.collect, which this install lacks") from None
    from geomprobe.models import load_model
    from geomprobe.probes.control import probe_model_source

    target = probe_model_source(probes, args.model)
    if not target or target == "arrays":
        raise GeomprobeError("the probe does not record a loadable model; pass --model M")
    loaded = load_model(target, dtype=args.dtype, device=args.device)
    mismatch = check_compatible(
        probes,
        model_id=loaded.model_id,
        d_model=loaded.d_model,
        allow_model_mismatch=args.allow_model_mismatch,
        where=f"model {target}",
    )
    acts = pooled_activations(loaded, list(args.text), probes.hooks, [probes.pooling])
    out = []
    for i, text in enumerate(args.text):
        row = {"text": text, "scores": {}}
        for hook in probes.hooks:
            row["scores"][hook] = float(probes.decision_function(hook, acts[hook][probes.pooling][i : i + 1])[0])
        out.append(row)
        best = max(row["scores"], key=lambda h: abs(row["scores"][h]))
        print(f"{text[:60]!r}: {probes.positive_label} score {row['scores'][best]:+.3f} at {best}")
    if args.json:
        write_json(
            args.json,
            {
                "model_id": loaded.model_id,
                "model_mismatch": mismatch,
                "pooling": probes.pooling,
                "method": probes.method,
                "positive_label": probes.positive_label,
                "results": out,
            },
        )
    return 0
