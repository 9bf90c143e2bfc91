"""``geomprobe steer``: build, search, generate, ablate, export-gguf, screen."""

from __future__ import annotations

import argparse
import math

from geomprobe.cli.common import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Output,
    Range,
    add_checks,
    add_hooks_arg,
    add_model_args,
    add_overwrite_arg,
    check_command_outputs,
    model_from_args,
    write_json,
)
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_write_text, removed_if_failed
from geomprobe.core.methods import CENTERED, RENAMED, UNCENTERED


def _finite_float(text: str) -> float:
    # ArgumentTypeError: argparse prints the message itself and exits with code 2.
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass a finite value such as 4") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite; pass a finite value such as 4")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("steer", help="steering vectors: build, search layers, generate, ablate, export")
    sub = p.add_subparsers(dest="steer_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    b = sub.add_parser("build", help="build a steering vector from a cache file or a saved probe")
    b.add_argument("cache", nargs="?", help="activation cache (.h5) with two labelled classes")
    b.add_argument("--out", required=True, help="folder to write vector.safetensors + vector.json")
    b.add_argument(
        "--method",
        default="mean-diff",
        choices=["mean-diff", CENTERED, UNCENTERED, *RENAMED["steering"]],
        help=f"direction method (old spellings {', '.join(RENAMED['steering'])} warn; see docs/steering.md)",
    )
    b.add_argument("--pooling", default="last", help="cache pooling to read (last or mean)")
    b.add_argument("--positive-label", help="label the vector points toward (default: harmful/dishonest/... else the second)")
    b.add_argument("--negative-label", help="label to contrast with (default: every other label)")
    b.add_argument("--probe", help="use a saved probe's direction instead of a cache")
    b.add_argument("--overwrite", action="store_true")
    add_hooks_arg(b, "every hook in the cache")
    b.set_defaults(func=run_build)

    g = sub.add_parser("generate", help="print unsteered vs steered generations")
    g.add_argument("vector", help="steering vector folder")
    add_model_args(g)
    g.add_argument("--prompt", action="append", required=True, help="user message (repeatable)")
    g.add_argument("--multiplier", type=_finite_float, default=4.0)
    add_hooks_arg(g, "the hooks the vector was read at")
    g.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-chat", action="store_true", help="feed prompts as raw text (no chat template)")
    g.add_argument(
        "--via",
        default="auto",
        choices=["auto", "bridge", "hf"],
        help="hook the plain Hugging Face modules (hf, fast) or the bridge's hook points (bridge); "
        "auto: hf where every hook maps onto a module",
    )
    g.add_argument("--json", help="also write the generations here")
    g.add_argument("--table", help="write a Markdown table of the generations here")
    add_overwrite_arg(g)
    add_checks(g, max_new_tokens=AT_LEAST_ONE, temperature=POSITIVE, seed=SEED)
    g.set_defaults(func=run_generate)

    s = sub.add_parser("search", help="sweep layers x multipliers on validation prompts")
    s.add_argument("vector", help="steering vector folder")
    add_model_args(s)
    s.add_argument("--dataset", required=True, help="bundled name (harmful-harmless, honesty, control) or a .jsonl/.csv file")
    s.add_argument("--harmless", help="prompts for the KL side-effect check (default: the dataset's negative class)")
    s.add_argument("--positive-label", help="dataset label whose prompts the metric is measured on")
    s.add_argument("--limit", type=int, default=16, help="prompts per class (default 16)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layers", nargs="+", metavar="HOOK", help="hooks to try (default: the vector's hooks)")
    s.add_argument("--multipliers", nargs="+", type=_finite_float, default=[-8.0, -4.0, 4.0, 8.0])
    s.add_argument(
        "--metric",
        default="refusal-log-odds",
        choices=["refusal-log-odds", "logit-diff", "probe", "refusal"],
        help="next-token refusal log-odds (default; 'refusal' is its old name), a logit difference, or a probe score",
    )
    s.add_argument(
        "--mode", default="add", choices=["add", "ablate"], help="add the vector, or ablate each hook's direction everywhere"
    )
    s.add_argument("--refusal-tokens", nargs="+", help="words whose first token counts as refusing (refusal log-odds)")
    s.add_argument("--answer-tokens", nargs=2, metavar=("A", "B"), help="answers for --metric logit-diff")
    s.add_argument("--probe", help="probe folder for --metric probe")
    s.add_argument(
        "--kl-limit", type=float, default=0.1, help="largest mean KL on harmless prompts a setting may have (default 0.1)"
    )
    s.add_argument("--max-layer-fraction", type=float, default=0.8, help="exclude layers at or above this fraction of depth")
    s.add_argument("--minimize", action="store_true", help="choose the lowest metric (e.g. to suppress refusal log-odds)")
    s.add_argument("--no-chat", action="store_true")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument(
        "--judge-tokens",
        type=int,
        default=40,
        help="judge the shortlisted settings by the refusal rate of this many greedy tokens (0: the metric decides)",
    )
    s.add_argument(
        "--judge-candidates",
        type=int,
        default=3,
        help="settings shortlisted by the metric (within the KL limit) and judged by refusal rate (default 3)",
    )
    s.add_argument("--json", help="write all records and the best setting here")
    s.add_argument("--plot", help="write the dose-response plot here (.png)")
    add_overwrite_arg(s)
    add_checks(
        s,
        limit=AT_LEAST_ONE,
        seed=SEED,
        kl_limit=NON_NEGATIVE,
        batch_size=AT_LEAST_ONE,
        judge_tokens=NON_NEGATIVE,
        judge_candidates=AT_LEAST_ONE,
        max_layer_fraction=Range(low=0, high=1, low_open=True),
    )
    s.set_defaults(func=run_search)

    a = sub.add_parser("ablate", help="ablate a direction; optionally bake it into the weights")
    a.add_argument("vector", help="steering vector folder")
    add_model_args(a)
    a.add_argument("--hook", help="which of the vector's hooks gives the direction (needed if it has several)")
    a.add_argument("--save-model", help="write the weight-orthogonalised model (HF checkpoint folder) here")
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--prompt", action="append", help="show generations with and without the ablation")
    a.add_argument("--max-new-tokens", type=int, default=48)
    add_checks(a, max_new_tokens=AT_LEAST_ONE)
    a.set_defaults(func=run_ablate)

    e = sub.add_parser("export-gguf", help="export as a llama.cpp control vector")
    e.add_argument("vector", help="steering vector folder")
    e.add_argument("--out", required=True, help="output .gguf file")
    e.add_argument("--multiplier", type=_finite_float, default=1.0, help="scale baked into the file")
    e.add_argument(
        "--model-hint", help="controlvector.model_hint: the architecture, config.model_type (default: read from the model)"
    )
    e.add_argument("--overwrite", action="store_true")
    e.add_argument(
        "--hooks",
        nargs="+",
        metavar="HOOK",
        help="hooks to export, e.g. resid_post:12 or blocks.12.hook_resid_post (default: all; block 0 is left out)",
    )
    e.set_defaults(func=run_export)

    c = sub.add_parser("screen", help="fast geometric layer screen of a cache (no model)")
    c.add_argument("cache")
    add_hooks_arg(c, "every hook in the cache")
    c.add_argument("--pooling", default="last")
    c.add_argument("--positive-label")
    c.add_argument("--bins", type=int, default=32)
    c.add_argument("--json")
    c.add_argument("--plot")
    add_overwrite_arg(c)
    add_checks(c, bins=Range(low=2, integer=True))
    c.set_defaults(func=run_screen)


# -- helpers ----------------------------------------------------------------------------------
def _load_vector(folder: str):
    from geomprobe.steering import SteeringVector

    return SteeringVector.load(folder)


def read_prompts(spec: str) -> list[tuple[str, str]]:
    """Deprecated: :func:`geomprobe.steering.user_prompts`."""
    import warnings

    from geomprobe.steering import user_prompts

    warnings.warn("geomprobe.cli.steer.read_prompts is now geomprobe.steering.user_prompts", DeprecationWarning, stacklevel=2)
    return user_prompts(spec)


def search_note(best_score: float, baseline: float, minimize: bool) -> str:
    """The remark after the chosen setting when it does not move the metric the way asked."""
    change = best_score - baseline
    if minimize and change >= 0:
        return "; the chosen setting does not lower the metric"
    if not minimize and change <= 0:
        return "; the chosen setting does not raise the metric"
    return ""


# -- actions ----------------------------------------------------------------------------------
def run_build(args: argparse.Namespace) -> int:
    from geomprobe.steering import build_from_cache, build_from_probe
    from geomprobe.steering.vectors import SIDECAR_FILE, VECTOR_FILE

    [out] = check_command_outputs(
        args, Output(args.out, "--out", "folder", what="steering vector", holds=SIDECAR_FILE, owns=(SIDECAR_FILE, VECTOR_FILE))
    )
    if args.probe:
        vec = build_from_probe(args.probe, hooks=args.hooks)
    elif args.cache:
        vec = build_from_cache(
            args.cache,
            hooks=args.hooks,
            method=args.method,
            pooling=args.pooling,
            positive_label=args.positive_label,
            negative_label=args.negative_label,
        )
    else:
        raise GeomprobeError("give a cache file (geomprobe steer build CACHE.h5 --out DIR) or --probe PROBE_DIR")
    with removed_if_failed(out):
        vec.save(out, overwrite=args.overwrite)
    meta = vec.metadata
    print(
        f"wrote {out} ({vec.method}, {len(vec.hooks)} hooks, pooling {vec.pooling}, d_model {vec.d_model}; "
        f"positive {meta.get('positive_label', '-')}, {meta.get('n_pairs', 0)} pairs)"
    )
    for hook in vec.hooks:
        print(f"  {hook:32s} norm {vec.norms[hook]:.4f}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from geomprobe.steering import compare_generations, generation_table
    from geomprobe.steering.apply import check_multiplier_fits, plan_steering

    vec = _load_vector(args.vector)
    check_command_outputs(args)
    check_multiplier_fits(vec, args.multiplier, args.dtype)
    model = model_from_args(args)

    plan_steering(model, vec, args.hooks, args.via)  # fail on width, hooks and route before generating
    rows = [
        g.to_dict()
        for g in compare_generations(
            model,
            vec,
            args.prompt,
            multipliers=(0.0, args.multiplier),
            hooks=args.hooks,
            positions=args.positions,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.sample,
            temperature=args.temperature,
            seed=args.seed,
            chat=not args.no_chat,
            via=args.via,
        )
    ]
    hooks = rows[-1]["hooks"]
    print(f"model {model.model_id}; vector {vec.method} at {', '.join(hooks)}; positions {args.positions}")
    for prompt in args.prompt:
        print(f"\n> {prompt}")
        for row in rows:
            if row["prompt"] == prompt:
                tag = "unsteered" if row["multiplier"] == 0 else f"x{row['multiplier']:g}"
                print(f"  [{tag:>9s}] {row['text']}")
    if args.json:
        write_json(args.json, {"model_id": model.model_id, "vector": vec.describe(), "positions": args.positions, "rows": rows})
    if args.table:
        atomic_write_text(args.table, generation_table(rows) + "\n")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from geomprobe.steering import (
        LayerRule,
        ValidationPrompts,
        canonical_metric,
        hold_out_build_prompts,
        judged_choice,
        search_layers,
    )
    from geomprobe.steering import validation_prompts as read_validation
    from geomprobe.steering.search import check_search_settings

    vec = _load_vector(args.vector)
    check_command_outputs(args)
    if args.plot and args.mode == "ablate":
        raise GeomprobeError("--plot draws dose-response curves over multipliers; it needs --mode add")
    metric = canonical_metric(args.metric)
    rule = LayerRule(
        kl_limit=args.kl_limit,
        max_layer_fraction=args.max_layer_fraction,
        judge_candidates=args.judge_candidates,
        maximize=not args.minimize,
    )
    split = read_validation(args.dataset, args.harmless, args.positive_label)
    probe = None
    if metric == "probe" and args.probe:  # without --probe, check_search_settings says what is missing
        from geomprobe.steering import build_from_probe

        pv = build_from_probe(args.probe)
        probe = (pv.hooks[0], pv.vectors[pv.hooks[0]].numpy(), 0.0)
    check_search_settings(
        metric,
        args.mode,
        answer_tokens=args.answer_tokens,
        probe=probe,
        vector=vec,
        multipliers=args.multipliers,
        dtype=args.dtype,
    )
    model = model_from_args(args)
    # keep the vector's training prompts out of the validation split, or say that they are in it
    prompts, harmless, overlap = hold_out_build_prompts(vec, model.tokenizer, split.prompts, split.harmless, not args.no_chat)
    sample = ValidationPrompts(prompts, harmless, split.positive_label).sample(args.limit, args.seed)
    prompts, harmless = sample.prompts, sample.harmless
    refusal_ids = None
    if args.refusal_tokens:
        from geomprobe.steering import refusal_token_ids

        refusal_ids = refusal_token_ids(model.tokenizer, args.refusal_tokens)
    result = search_layers(
        model,
        vec,
        prompts,
        harmless_prompts=harmless,
        hooks=args.layers,
        multipliers=args.multipliers,
        metric=metric,
        mode=args.mode,
        refusal_tokens=refusal_ids,
        answer_tokens=args.answer_tokens,
        probe=probe,
        chat=not args.no_chat,
        batch_size=args.batch_size,
    )
    print(
        f"model {result.model_id}; metric {result.metric} on {len(prompts)} prompts (unsteered mean {result.baseline:.4f}); "
        f"KL on {len(harmless)} harmless prompts"
    )
    print(("warning: " if overlap.trained_on_validation else "note: ") + overlap.note)
    print(result.table())
    chosen, judged = judged_choice(
        model, vec, result, prompts, harmless, rule, judge_tokens=args.judge_tokens, batch_size=args.batch_size, seed=args.seed
    )
    best = next(r for r in result.records if r.hook == chosen.hook and r.multiplier == chosen.multiplier)
    mult = "ablate" if best.multiplier is None else f"{best.multiplier:g}"
    kl = "n/a" if best.kl_mean is None else f"{best.kl_mean:.4f}"
    print(
        f"chosen: {best.hook} multiplier {mult} -> {best.metric} {best.score_mean:.4f} (KL {kl})"
        f"{search_note(best.score_mean, result.baseline, args.minimize)}"
    )
    print(f"rule ({chosen.selection}): {chosen.selected_by}")
    if not chosen.below_depth_limit:
        print(f"warning: no screened layer is below {args.max_layer_fraction:g} of depth; the shallowest was taken")
    if not chosen.chosen.within_kl:
        print(f"warning: no setting keeps KL <= {args.kl_limit:g}; the least disruptive ones were compared")
    if judged is not None:
        for setting in ("unsteered", "steered"):
            rates = ", ".join(
                f"{name} {j['rate']:.0%} [{j['ci'][0]:.0%}, {j['ci'][1]:.0%}] of {j['n']}" for name, j in judged[setting].items()
            )
            print(f"judge ({args.judge_tokens} greedy tokens, refusal rate by phrases) {setting}: {rates}")
    if args.json:
        payload = result.to_dict(args.kl_limit)
        payload["best"] = best.to_dict()
        payload["selection"] = chosen.to_dict()
        payload["objective"] = "minimize" if args.minimize else "maximize"
        payload["build_overlap"] = overlap.to_dict()
        payload["judge"] = judged
        write_json(args.json, payload)
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.steering import dose_response

        save_figure(dose_response(result), args.plot)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from geomprobe.steering import ablate, bake_ablation, generate
    from geomprobe.steering.ablation import unit_direction

    vec = _load_vector(args.vector)
    if args.hook and args.hook not in vec.vectors:
        raise GeomprobeError(f"the vector has no direction for {args.hook}; it has {', '.join(vec.hooks[:4])}")
    unit_direction(vec, args.hook)  # validates --hook / a single hook before loading the model
    check_command_outputs(args, Output(args.save_model, "--save-model", "folder", what="ablated checkpoint"))
    model = model_from_args(args)
    if vec.d_model != model.d_model:
        raise GeomprobeError(
            f"steering vector width {vec.d_model} does not match the model's d_model {model.d_model}; "
            "build the vector from this model's activations"
        )
    if args.prompt:
        base = generate(model, args.prompt, max_new_tokens=args.max_new_tokens)
        with ablate(model, vec, hook=args.hook):
            abl = generate(model, args.prompt, max_new_tokens=args.max_new_tokens)
        for b_row, a_row in zip(base, abl):
            print(f"\n> {b_row.prompt}\n  [ original] {b_row.text}\n  [  ablated] {a_row.text}")
    if args.save_model:
        out = bake_ablation(model, vec, args.save_model, hook=args.hook, overwrite=args.overwrite)
        print(f"wrote ablated checkpoint {out} (load it with --model {out})")
    elif not args.prompt:
        raise GeomprobeError("nothing to do; pass --save-model DIR and/or --prompt TEXT")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from geomprobe.steering import export_gguf

    check_command_outputs(args, Output(args.out, "--out", example_name="vector.gguf"))
    vec = _load_vector(args.vector)
    result = export_gguf(
        vec, args.out, multiplier=args.multiplier, hooks=args.hooks, model_hint=args.model_hint, overwrite=args.overwrite
    )
    layers = ", ".join(f"{h} -> direction.{k}" for h, k in result.layers.items())
    print(f"wrote {result.path} (model hint {result.model_hint}): {layers}")
    for hook, why in result.dropped.items():
        print(f"note: left out {hook}: {why}")
    return 0


def run_screen(args: argparse.Namespace) -> int:
    from geomprobe.steering import screen_cache

    check_command_outputs(args)
    records = screen_cache(args.cache, hooks=args.hooks, pooling=args.pooling, positive_label=args.positive_label, bins=args.bins)
    print(f"{'hook':32s} {'JS bits':>8s} {'cohen d':>8s} {'mean cos':>9s} {'sign agr':>9s}")
    for r in records:
        cos = "-" if r.mean_cosine is None else f"{r.mean_cosine:.3f}"
        sign = "-" if r.sign_agreement is None else f"{r.sign_agreement:.3f}"
        print(f"{r.hook:32s} {r.js_bits:8.3f} {r.cohens_d:8.3f} {cos:>9s} {sign:>9s}")
    if args.json:
        write_json(args.json, {"cache": args.cache, "records": [r.__dict__ for r in records]})
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.steering import layer_screen

        save_figure(layer_screen(records), args.plot)
    return 0
