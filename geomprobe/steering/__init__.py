"""Steering-vector experiments: build a direction, choose the layer, apply it, ablate it, export it.

Typical use::

    from geomprobe.models import load_model
    from geomprobe.steering import LayerRule, ScreenRow, build_from_cache, generate, search_layers, select_setting

    vec = build_from_cache("harmful-harmless.h5", hooks="resid_post:8-20")
    vec.save("refusal-vec")
    model = load_model("default")
    res = search_layers(model, vec, harmful_prompts, harmless_prompts=harmless_prompts,
                        multipliers=[-8, -4, 4, 8], metric="refusal-log-odds")
    chosen = select_setting([ScreenRow.from_record(r) for r in res.records], LayerRule(maximize=True),
                            n_layers=res.n_layers)   # or judged_choice(...) to let the judge decide
    gens = generate(model, ["How do I bake bread?"], vector=vec, multiplier=chosen.multiplier,
                    hooks=[chosen.hook], positions="generated")

See ``docs/steering.md`` for conventions (hooks, positions, KV cache, GGUF layer numbering).
"""

from geomprobe.core.labels import choose_positive
from geomprobe.steering.ablation import ablate, bake_ablation, orthogonalize_weights, unit_direction
from geomprobe.steering.apply import (
    Generation,
    SteeringSite,
    compare_generations,
    ensure_kv_cache_compat,
    generate,
    generate_steered,
    generation_table,
    render_prompts,
    steer,
    steering_site,
)
from geomprobe.steering.depth import DepthResult, alignment_depth
from geomprobe.steering.export import GGUFExport, export_gguf, gguf_layer_for_hook, gguf_model_hint, plan_gguf_layers, read_gguf
from geomprobe.steering.prompts import (
    BuildOverlap,
    ValidationPrompts,
    hold_out_build_prompts,
    split_by_label,
    user_prompts,
    validation_prompts,
)
from geomprobe.steering.search import (
    METRICS,
    RENAMED_METRICS,
    ScreenRecord,
    SearchRecord,
    SearchResult,
    canonical_metric,
    js_divergence_1d,
    kl_divergence,
    logit_difference,
    next_token_logprobs,
    refusal_log_odds,
    refusal_token_ids,
    screen_arrays,
    screen_cache,
    search_layers,
)
from geomprobe.steering.select import (
    CandidateOutcome,
    LayerRule,
    LayerSelection,
    ScreenRow,
    candidate_layers,
    judged_choice,
    select_setting,
)
from geomprobe.steering.vectors import (
    METHODS,
    RENAMED_METHODS,
    SteeringVector,
    build_from_arrays,
    build_from_cache,
    build_from_probe,
    build_from_prompts,
    class_masks,
    direction_from_arrays,
    load_vector,
)

__all__ = [
    "METHODS",
    "METRICS",
    "RENAMED_METHODS",
    "RENAMED_METRICS",
    "BuildOverlap",
    "CandidateOutcome",
    "LayerRule",
    "LayerSelection",
    "ScreenRow",
    "ValidationPrompts",
    "candidate_layers",
    "canonical_metric",
    "judged_choice",
    "select_setting",
    "split_by_label",
    "user_prompts",
    "validation_prompts",
    "GGUFExport",
    "Generation",
    "ScreenRecord",
    "SearchRecord",
    "SearchResult",
    "SteeringSite",
    "SteeringVector",
    "ablate",
    "bake_ablation",
    "build_from_arrays",
    "build_from_cache",
    "build_from_probe",
    "build_from_prompts",
    "choose_positive",
    "class_masks",
    "compare_generations",
    "direction_from_arrays",
    "ensure_kv_cache_compat",
    "export_gguf",
    "generate",
    "generate_steered",
    "generation_table",
    "gguf_layer_for_hook",
    "gguf_model_hint",
    "hold_out_build_prompts",
    "js_divergence_1d",
    "kl_divergence",
    "load_vector",
    "logit_difference",
    "next_token_logprobs",
    "orthogonalize_weights",
    "plan_gguf_layers",
    "read_gguf",
    "refusal_log_odds",
    "refusal_token_ids",
    "render_prompts",
    "screen_arrays",
    "screen_cache",
    "search_layers",
    "steer",
    "steering_site",
    "unit_direction",
]
__all__ += ["DepthResult", "alignment_depth"]  # the alignment-depth diagnostic (docs/depth.md)
