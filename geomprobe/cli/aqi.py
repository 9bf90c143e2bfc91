"""``geomprobe aqi``: exact cluster-separation indices and AQI for each layer of a cache file."""

from __future__ import annotations

import argparse
import math
import sys

from geomprobe.cli.common import (
    AT_LEAST_ZERO,
    NON_NEGATIVE,
    OPEN_UNIT,
    SEED,
    UNIT,
    Range,
    add_checks,
    add_hooks_arg,
    add_overwrite_arg,
    check_command_outputs,
    write_json,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "aqi",
        help="Alignment Quality Index per layer (DBS, Dunn, Xie-Beni, CHI) with intervals and p-values",
        description=(
            "Exact Davies-Bouldin, Dunn, Xie-Beni and Calinski-Harabasz indices of the two label classes "
            "on raw activations, AQI = gamma/(1+DBS) + (1-gamma)*DI/(1+DI), bootstrap intervals, a "
            "label-permutation p-value, and the layer-pooled AQI (weights learned on a training split, "
            "AQI on the held-out split). See docs/aqi.md."
        ),
    )
    p.add_argument("cache", metavar="FILE.h5", help="activation cache written by geomprobe cache")
    add_hooks_arg(p, help_default="every hook in the cache")
    p.add_argument("--pooling", default="last", choices=("last", "mean"), help="pooled activations to use (default last)")
    p.add_argument(
        "--positive-label", default=None, metavar="NAME", help="the unsafe class, compared with all other labelled rows"
    )
    p.add_argument("--labels", nargs=2, default=None, metavar=("NEGATIVE", "POSITIVE"), help="compare these two labels only")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write per-layer records and the pooled result")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write the layer-wise AQI plot")
    p.add_argument("--gamma", type=float, default=0.5, help="weight of the Davies-Bouldin term (default 0.5)")
    p.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap replicates per layer (0: none)")
    p.add_argument("--n-permutations", type=int, default=200, help="label permutations per layer (0: no p-value)")
    p.add_argument("--max-points", type=int, default=1000, help="rows used for resampling (stratified subsample above this)")
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument(
        "--ci-method",
        default="basic",
        choices=("percentile", "basic"),
        help="bootstrap interval: basic (bias-reflected, default) or percentile; see docs/aqi.md",
    )
    p.add_argument("--reduce", default="none", help="none (default), pca[:K] or tsne[:K]: only to reproduce the paper's numbers")
    p.add_argument("--variants", nargs="+", default=[], choices=("chi-xb",), help="also report the paper's chi-xb variant")
    p.add_argument("--no-pooled", action="store_true", help="skip the layer-pooled AQI")
    p.add_argument("--train-fraction", type=float, default=0.5, help="training share for the pooled AQI weights")
    p.add_argument("--sparsity", type=float, default=0.1, help="pull of the pooled weights towards few layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    add_overwrite_arg(p)
    add_checks(
        p,
        gamma=UNIT,
        n_bootstrap=AT_LEAST_ZERO,
        n_permutations=AT_LEAST_ZERO,
        max_points=Range(low=4, integer=True),
        ci=OPEN_UNIT,
        train_fraction=OPEN_UNIT,
        sparsity=NON_NEGATIVE,
        seed=SEED,
    )
    p.set_defaults(func=run)


def _fmt(value, width: int = 8) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    if isinstance(value, float) and math.isinf(value):
        return f"{'inf':>{width}}"
    return f"{value:>{width}.4g}"


def _with_interval(value, ci) -> str:
    """``value [low, high]`` of a registered index (its bootstrap interval, when one was drawn)."""
    text = _fmt(value, 0).strip()
    if ci is not None and not any(isinstance(v, float) and math.isnan(v) for v in ci):
        text += f" [{_fmt(ci[0], 0).strip()}, {_fmt(ci[1], 0).strip()}]"
    return text


def _table(results, pooled) -> str:
    # one column per index registered beyond the paper's four (geomprobe.aqi.register_index)
    extra = list(results[0].extra) if results else []
    cells = [[_with_interval(r.extra.get(name), r.ci.get(name)) for name in extra] for r in results]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(extra)]
    extra_head = "".join(f"  {name:<{w}}" for name, w in zip(extra, widths))
    head = (
        f"{'hook':<28} {'layer':>5} {'n':>6} {'DBS':>8} {'Dunn':>8} {'XBI':>8} {'CHI':>8} {'AQI':>7}  {'CI':<17} {'p':>7}"
        + extra_head
    )
    lines = [head, "-" * len(head)]
    for r, row in zip(results, cells):
        ci = f"[{r.aqi_ci_low:.3f}, {r.aqi_ci_high:.3f}]" if not math.isnan(r.aqi_ci_low) else "-"
        lines.append(
            f"{r.hook:<28} {r.layer:>5} {r.n:>6} {_fmt(r.davies_bouldin)} {_fmt(r.dunn)} {_fmt(r.xie_beni)} "
            f"{_fmt(r.calinski_harabasz)} {r.aqi:>7.4f}  {ci:<17} {_fmt(r.p_value, 7)}"
            + "".join(f"  {cell:<{w}}" for cell, w in zip(row, widths)).rstrip()
        )
        for note in r.notes:
            lines.append(f"    note: {note}")
    defined = [r for r in results if not math.isnan(r.aqi)]
    if len(results) > 1 and defined:
        top_layer = max(defined, key=lambda r: r.aqi)
        lines.append(
            f"max over {len(results)} layers: AQI {top_layer.aqi:.4f} at {top_layer.hook} (chosen on the rows it is "
            "computed on: optimistic, multiple comparisons; compare each layer's interval and p)"
        )
    if pooled is not None:
        top = sorted(((w, h) for h, w in zip(pooled.hooks, pooled.weights) if w > 0), reverse=True)[:5]
        lines.append(
            f"layer-pooled AQI (weights fitted on the training split, AQI on the held-out split, n={pooled.n_test}): "
            f"{pooled.heldout_aqi:.4f}; single layer chosen on the training split {pooled.best_single_hook}: held-out "
            f"{pooled.best_single_heldout_aqi:.4f}; weights " + ", ".join(f"{h}={w:.2f}" for w, h in top)
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from geomprobe.aqi import (
        INDEX_INFO,
        INDEX_NAMES,
        aqi_by_layer,
        cache_metadata,
        extra_index_names,
        parse_reduction,
        pooled_aqi,
    )
    from geomprobe.core import __version__

    check_command_outputs(args)
    reduction = parse_reduction(args.reduce)
    label_pair = tuple(args.labels) if args.labels else None
    meta = cache_metadata(args.cache)
    results = aqi_by_layer(
        args.cache,
        args.hooks,
        args.pooling,
        args.positive_label,
        label_pair,
        gamma=args.gamma,
        n_bootstrap=args.n_bootstrap,
        n_permutations=args.n_permutations,
        max_points=args.max_points,
        ci_level=args.ci,
        ci_method=args.ci_method,
        reduce=args.reduce,
        variants=args.variants,
        seed=args.seed,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    pooled = None
    pooled_note = None
    if args.no_pooled:
        pooled_note = "skipped (--no-pooled)"
    elif len(results) < 2:
        pooled_note = "skipped: needs two or more hooks"
    else:
        pooled = pooled_aqi(
            args.cache,
            args.hooks,
            args.pooling,
            args.positive_label,
            label_pair,
            train_fraction=args.train_fraction,
            sparsity=args.sparsity,
            gamma=args.gamma,
            seed=args.seed,
            device=args.device,
        )
    print(
        f"{meta['model_id'] or 'unknown model'} | {args.pooling} pooling "
        f"| {' vs '.join(results[0].n_per_class)} | metrics in float64"
    )
    print(_table(results, pooled))
    if args.json:
        payload = {
            "tool": "geomprobe aqi",
            "geomprobe_version": __version__,
            **meta,
            "pooling": args.pooling,
            "metric_dtype": "float64",
            "classes": list(results[0].n_per_class),
            "indices": [*INDEX_NAMES, *extra_index_names()],
            "extra_indices": {name: INDEX_INFO[name].title for name in extra_index_names()},
            "formula": f"aqi = {args.gamma:g} / (1 + davies_bouldin) + {1 - args.gamma:g} * dunn / (1 + dunn)",
            "gamma": args.gamma,
            "reduction": reduction[0] if reduction[0] == "none" else f"{reduction[0]}:{reduction[1]}",
            "n_bootstrap": args.n_bootstrap,
            "n_permutations": args.n_permutations,
            "max_points": args.max_points,
            "seed": args.seed,
            "per_layer": [r.to_record() for r in results],
            "pooled": pooled.to_record() if pooled is not None else None,
            "pooled_note": pooled_note,
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.geometry import plot_aqi_layers

        titles = {name: INDEX_INFO[name].title for name in extra_index_names()}
        logs = [name for name in titles if INDEX_INFO[name].log_scale]
        save_figure(
            plot_aqi_layers(results, model_id=meta["model_id"], pooled=pooled, index_titles=titles, log_indices=logs), args.plot
        )
        print(f"wrote {args.plot}")
    return 0
