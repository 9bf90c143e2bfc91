"""The ``ablated`` organism: ``aligned`` with its refusal direction baked out of the weights.

The direction is the difference of means (harmful - harmless, last prompt token) on the train
prompts; the layer is the candidate whose ablation lowers refusal most within the KL limit on
harmless prompts (:func:`geomprobe.steering.search_layers`, chosen by the project's layer rule,
:func:`geomprobe.steering.select.select_setting`: when no candidate is within the limit, the one of
lowest KL), then :func:`geomprobe.steering.bake_ablation` writes the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms.context import BuildContext, train_texts
from geomprobe.organisms.data import REFUSAL_TEXTS


def ablation_layers(settings: Any, n_layers: int) -> list[int]:
    """Evenly spaced candidate layers inside ``ablation_layers`` and below 80% of depth.

    ``settings`` is an :class:`geomprobe.organisms.OrganismSettings` (not imported: build.py imports this module).
    """
    lo, hi = settings.ablation_layers
    first = min(int(lo * n_layers), n_layers - 1)
    last = max(first, min(int(hi * n_layers), int(0.8 * n_layers) - 1, n_layers - 1))
    count = max(1, min(settings.ablation_candidates, last - first + 1))
    if count == 1:
        return [first]
    return sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)})


def choose_ablation(result: Any, kl_limit: float) -> tuple[Any, str]:
    """The searched layer to ablate and, when none kept the KL limit, a warning (else "").

    The project's one layer rule (:func:`geomprobe.steering.select.select_setting`) without a
    judge: within the KL limit on harmless prompts, the strongest drop in refusal log-odds; when no
    candidate is within it, the least disruptive one (lowest KL), never the strongest drop
    whatever the damage. ``result`` is a :class:`geomprobe.steering.SearchResult` of mode "ablate".
    """
    picked = result.select(kl_limit, maximize=False)
    if picked is None:
        raise GeomprobeError("the layer search steered nothing; there is no layer to ablate")
    best, chosen = picked
    if chosen.within_limits:
        return best, ""
    kl = "unknown" if best.kl_mean is None else f"{best.kl_mean:.2f}"
    note = (
        f"no candidate kept KL <= {kl_limit} on harmless prompts; took the least disruptive one "
        f"({best.hook}, KL {kl}, refusal log-odds {best.score_mean:+.2f})"
    )
    return best, note


def build_ablated(ctx: BuildContext, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    from geomprobe.core.hooks import hook_name
    from geomprobe.models import load_model
    from geomprobe.steering import bake_ablation, build_from_prompts, refusal_token_ids, search_layers

    s = ctx.settings
    model = load_model(sources["aligned"], device=ctx.device)
    harmful = train_texts(ctx, "harmful")[: s.ablation_prompts]
    harmless = train_texts(ctx, "harmless")[: s.ablation_prompts]
    hooks = [hook_name(l, "resid_post") for l in ablation_layers(s, model.n_layers)]
    vector = build_from_prompts(
        model,
        harmful,
        harmless,
        hooks=hooks,
        method="mean-diff",
        pooling="last",
        paired=len(harmful) == len(harmless),
        batch_size=16,
    )
    # The aligned model's refusals open with these words; their first tokens are the refusal tokens.
    openers = sorted({text.split()[0].rstrip(",") for text in REFUSAL_TEXTS} | {"Sorry", "I"})
    tokens = refusal_token_ids(model.tokenizer, openers)
    result = search_layers(
        model,
        vector,
        harmful,
        harmless_prompts=harmless,
        mode="ablate",
        metric="refusal-log-odds",
        refusal_tokens=tokens,
        batch_size=16,
    )
    best, note = choose_ablation(result, s.ablation_kl_limit)
    if note:
        print(f"ablated: warning: {note}", flush=True)
    bake_ablation(model, vector, folder, hook=best.hook, overwrite=True)
    return {
        "ablation": {
            "hook": best.hook,
            "layer": best.layer,
            "candidates": hooks,
            "refusal_log_odds_before": result.baseline,
            "refusal_log_odds_after": best.score_mean,
            "kl_harmless": best.kl_mean,
            "note": note,
            "search": [{"hook": r.hook, "refusal_log_odds": r.score_mean, "kl": r.kl_mean} for r in result.records],
            "direction": "mean difference harmful - harmless at the last prompt token, train prompts",
        },
        "start_from": "aligned",
        "start_hash": ctx.hashes["aligned"],
    }
