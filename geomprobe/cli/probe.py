"""``geomprobe probe``: train, evaluate, transfer and apply linear deception probes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from geomprobe.cli.common import (
    AT_LEAST_ZERO,
    OPEN_UNIT,
    POSITIVE,
    SEED,
    Output,
    Range,
    add_checks,
    add_hooks_arg,
    add_overwrite_arg,
    check_command_outputs,
    write_json,
)
from geomprobe.cli.probe_apply import run_score, run_tokens
from geomprobe.cli.probe_deception import print_condition_table, register_deception_set
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import removed_if_failed


def _float_or_auto(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _add_kind_args(parser: argparse.ArgumentParser) -> None:
    """``--method`` (any registered probe kind) and ``--param KEY=VALUE`` (that kind's parameters)."""
    from geomprobe.core.methods import RENAMED
    from geomprobe.probes import PROBE_KINDS, method_names

    kinds = "; ".join(f"{name}: {', '.join(kind.param_names()) or 'no parameters'}" for name, kind in PROBE_KINDS.items())
    parser.add_argument(
        "--method",
        default="logistic",
        choices=[*method_names(), *RENAMED["probes"]],
        metavar="KIND",
        help=f"probe kind (registered: {', '.join(method_names())}; default logistic)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a parameter of the probe kind, repeatable, typed by the kind ({kinds})",
    )


def kind_params(args: argparse.Namespace, deprecated: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The probe kind's canonical name and its parameters from ``--param`` and the deprecated per-kind
    flags (``deprecated``: dest -> parameter), each flag noted once on stderr with its ``--param`` form."""
    from geomprobe.probes import parse_param_args, probe_kind

    kind = probe_kind(args.method)
    params = parse_param_args(kind, args.param)
    for dest, key in deprecated.items():
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-") if dest != "C" else "--C"
        shown = str(value).lower() if isinstance(value, bool) else value
        _say(f"probe: {flag} is deprecated; use --param {key}={shown}")
        if key in params:
            raise GeomprobeError(f"{flag} and --param {key}=... both set {key}; keep only --param {key}=...")
        params.update(parse_param_args(kind, [f"{key}={shown}"]))
    kind.make_params(**params)  # a bad value is one line before any data is read
    return kind.name, params


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="linear deception probes: train, eval, transfer, tokens, score, deception-set",
        description="Train, evaluate and apply linear probes (one per layer).",
    )
    sub = p.add_subparsers(dest="probe_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train one probe per hook with a pair-respecting held-out split")
    t.add_argument("cache", help="activation cache (.h5) with two classes")
    t.add_argument("--out", required=True, help="probe folder to write (probe.safetensors + probe.json)")
    _add_kind_args(t)
    add_hooks_arg(t, help_default="every hook in the cache")
    t.add_argument("--pooling", default="last", help="which pooled activations to train on (last, mean)")
    t.add_argument(
        "--positive-label",
        default=None,
        help="label treated as positive (default: dishonest/deceptive/harmful/unsafe if present, else the second label)",
    )
    t.add_argument("--C", type=float, default=None, help="deprecated: --param C=VALUE (logistic)")
    t.add_argument("--fit-intercept", action="store_true", help="deprecated: --param fit_intercept=true (logistic)")
    t.add_argument("--shrinkage", type=_float_or_auto, default=None, help="deprecated: --param shrinkage=VALUE (lda)")
    t.add_argument("--test-size", type=float, default=0.2, help="fraction of pairs held out (default 0.2)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--control",
        default=None,
        help="control cache for the recall threshold; default: the bundled 'control' prompts run through the cache's model",
    )
    t.add_argument(
        "--no-control",
        action="store_true",
        help="tune the threshold on the held-out negatives instead (reported as test-negatives)",
    )
    t.add_argument("--model", default=None, help="model for the bundled control set (default: the cache's model)")
    t.add_argument("--fpr", type=float, default=0.01)
    t.add_argument("--device", default="auto")
    t.add_argument("--json", default=None, help="write held-out per-layer metrics here")
    t.add_argument("--plot", default=None, help="write a per-layer metrics plot (PNG) here")
    t.add_argument("--overwrite", action="store_true", help="replace an existing probe and output files")
    add_checks(t, C=POSITIVE, shrinkage=Range(low=0, high=1, also=("auto",)), test_size=OPEN_UNIT, fpr=OPEN_UNIT, seed=SEED)
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a saved probe on a cache")
    e.add_argument("probe_dir")
    e.add_argument("cache")
    e.add_argument(
        "--control", default=None, help="control cache; default: the bundled 'control' prompts run through the probe's model"
    )
    e.add_argument(
        "--no-control",
        action="store_true",
        help="tune the threshold on the evaluated negatives instead (reported as test-negatives)",
    )
    e.add_argument("--model", default=None, help="model for the bundled control set (default: the probe's model)")
    e.add_argument("--fpr", type=float, default=0.01)
    e.add_argument("--positive-label", default=None)
    e.add_argument("--allow-model-mismatch", action="store_true", help="evaluate on a cache from another model/checkpoint")
    e.add_argument("--all-rows", action="store_true", help="score every row even if the cache is the probe's training data")
    e.add_argument("--json", required=True, help="output JSON (per_layer records)")
    e.add_argument("--plot", default=None, help="output PNG with AUROC and recall by layer")
    e.add_argument("--device", default="auto")
    e.add_argument(
        "--n-bootstrap",
        type=int,
        default=1000,
        help="bootstrap draws for the per-condition AUROC intervals (rows with a 'condition')",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    add_overwrite_arg(e)
    add_checks(e, fpr=OPEN_UNIT, n_bootstrap=AT_LEAST_ZERO, seed=SEED)
    e.set_defaults(func=run_eval)

    x = sub.add_parser("transfer", help="train on each cache and evaluate on every other")
    x.add_argument("caches", nargs="+")
    _add_kind_args(x)
    add_hooks_arg(x, help_default="hooks shared by all caches")
    x.add_argument("--pooling", default="last")
    x.add_argument("--C", type=float, default=None, help="deprecated: --param C=VALUE (logistic)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--fpr", type=float, default=0.01)
    x.add_argument("--json", required=True)
    x.add_argument("--plot", default=None, help="heatmap at the hook with the best mean off-diagonal AUROC")
    add_overwrite_arg(x)
    add_checks(x, C=POSITIVE, fpr=OPEN_UNIT, seed=SEED)
    x.set_defaults(func=run_transfer)

    k = sub.add_parser("tokens", help="per-token probe scores from an all-pooled cache, as HTML")
    k.add_argument("probe_dir")
    k.add_argument("cache")
    k.add_argument("--hook", default=None, help="hook to score (default: the layer the probe chose on its training rows)")
    k.add_argument("--rows", type=int, nargs="+", default=None, help="prompt rows (default: the first 20)")
    k.add_argument("--tokenizer", default=None, help="model folder whose tokenizer decodes the token ids (default: show ids)")
    k.add_argument("--allow-model-mismatch", action="store_true")
    k.add_argument("--html", required=True)
    k.add_argument("--json", default=None)
    add_overwrite_arg(k)
    add_checks(k, rows=AT_LEAST_ZERO)
    k.set_defaults(func=run_tokens)

    s = sub.add_parser("score", help="score one text with a saved probe")
    s.add_argument("probe_dir")
    s.add_argument("--model", default=None, help="model to run (default: the model the probe was trained on)")
    s.add_argument("--text", required=True, action="append", help="text to score (repeatable)")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--device", default="auto")
    s.add_argument("--allow-model-mismatch", action="store_true")
    s.add_argument("--json", default=None)
    add_overwrite_arg(s)
    s.set_defaults(func=run_score)

    register_deception_set(sub)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _table(records: list[dict[str, Any]]) -> None:
    print(f"{'hook':<28} {'AUROC':>7} {'bal.acc':>8} {'recall@fpr':>11} {'ECE':>6}")
    for r in records:
        fmt = lambda v: "   nan" if v is None or v != v else f"{v:.3f}"  # noqa: E731
        print(
            f"{r['hook']:<28} {fmt(r['auroc']):>7} {fmt(r['balanced_accuracy']):>8} "
            f"{fmt(r['recall_at_fpr']):>11} {fmt(r['calibration_error']):>6}"
        )


def run_train(args: argparse.Namespace) -> int:
    from geomprobe.probes import save_probe, train_probes
    from geomprobe.probes.persistence import SIDECAR, TENSORS

    [out] = check_command_outputs(args, Output(args.out, "--out", "folder", what="probe", holds=SIDECAR, owns=(SIDECAR, TENSORS)))
    method, params = kind_params(args, {"C": "C", "fit_intercept": "fit_intercept", "shrinkage": "shrinkage"})
    control = _control(args)
    probes, result = train_probes(
        args.cache,
        method,
        hooks=args.hooks,
        pooling=args.pooling,
        positive_label=args.positive_label,
        test_size=args.test_size,
        seed=args.seed,
        control=control,
        fpr=args.fpr,
        device=args.device,
        **params,
    )
    with removed_if_failed(out):
        save_probe(probes, out, overwrite=args.overwrite)
    _table(result.records)
    _say_threshold(args)
    from geomprobe.probes.selection import chosen_hook, headline

    head = headline(result, *chosen_hook(probes), seed=args.seed)
    _say(
        f"probe: {len(probes.hooks)} {probes.method} probe(s), positive={probes.positive_label!r}, held-out {head.line()}; "
        f"saved to {out}"
    )
    payload = {
        "probe_dir": str(out),
        "method": probes.method,
        "params": probes.fit.params,
        "positive_label": probes.positive_label,
        "model_id": probes.model_id,
        "pooling": probes.pooling,
        "control": _control_name(args),
        "headline": head.to_dict(),
        "per_layer": result.records,
    }
    if args.json:
        write_json(args.json, payload)
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.probes import plot_probe_layers

        save_figure(plot_probe_layers(result.records, model_id=probes.model_id), args.plot)
    return 0


def _control_name(args: argparse.Namespace) -> str:
    from geomprobe.probes.control import control_name

    return control_name(args.control, args.no_control)


def _say_threshold(args: argparse.Namespace) -> None:
    if args.no_control:
        _say(
            f"probe: recall@{args.fpr:g} FPR uses a threshold tuned on the test "
            "negatives (--no-control), not on control data; it is optimistic"
        )


def _control(args: argparse.Namespace):
    """``--control`` / ``--no-control`` / ``--model`` as a control source (see probes.control.choose_control)."""
    from geomprobe.probes.control import choose_control

    return choose_control(args.control, args.no_control, model=args.model, device=args.device)


def probe_model(probes, model: str | None) -> str:
    """Deprecated: :func:`geomprobe.probes.control.probe_model_source`."""
    import warnings

    from geomprobe.probes.control import probe_model_source

    warnings.warn("geomprobe.cli.probe.probe_model is now geomprobe.probes.probe_model_source", DeprecationWarning, stacklevel=2)
    return probe_model_source(probes, model)


def bundled_control_activations(probes, model: str | None, device: str = "auto") -> dict:
    """Deprecated: :func:`geomprobe.probes.control.bundled_control_activations`."""
    import warnings

    from geomprobe.probes.control import bundled_control_activations as run_control

    warnings.warn(
        "geomprobe.cli.probe.bundled_control_activations is now geomprobe.probes.bundled_control_activations",
        DeprecationWarning,
        stacklevel=2,
    )
    return run_control(probes, model, device)


def run_eval(args: argparse.Namespace) -> int:
    from geomprobe.probes import evaluate_probes, load_probe

    check_command_outputs(args)
    if args.control and args.no_control:
        raise GeomprobeError("pass either --control or --no-control, not both")
    if args.n_bootstrap < 0:
        raise GeomprobeError(f"--n-bootstrap must be 0 or more, got {args.n_bootstrap}")
    from geomprobe.activations.store import open_cache
    from geomprobe.probes.conditions import check_condition_grades, result_condition_metrics
    from geomprobe.probes.deception import LIE_PRESSURE

    probes = load_probe(args.probe_dir)
    with open_cache(args.cache) as handle:  # validate the cache (a deception set's grades too) before a slow model load
        check_condition_grades(handle)
    control = _control(args)
    result = evaluate_probes(
        probes,
        args.cache,
        control=control,
        fpr=args.fpr,
        positive_label=args.positive_label,
        allow_model_mismatch=args.allow_model_mismatch,
        all_rows=args.all_rows,
    )
    by_condition = result_condition_metrics(
        result, args.cache, pressure=LIE_PRESSURE, n_bootstrap=args.n_bootstrap, seed=args.seed
    )
    from geomprobe.probes.selection import chosen_hook, headline

    head = headline(
        result,
        *chosen_hook(probes, eval_rows=result.info["eval_rows"], eval_cache=Path(args.cache).name),
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    _table(result.records)
    print(f"headline: {head.line()}")
    if by_condition is not None:
        print_condition_table(
            by_condition,
            result.info["positive_label"],
            "/".join(result.info["negative_labels"]),
            chosen=head.hook,
            chosen_on=head.chosen_on,
        )
    info = dict(result.info)
    payload = {
        "probe_dir": str(args.probe_dir),
        "method": probes.method,
        "params": probes.fit.params,
        "pooling": probes.pooling,
        "positive_label": info["positive_label"],
        "control": _control_name(args),
        **info,
        "headline": head.to_dict(),
        "per_layer": result.records,
    }
    if by_condition is not None:
        payload["by_condition"] = by_condition
    write_json(args.json, payload)
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.probes import plot_probe_layers

        save_figure(
            plot_probe_layers(
                result.records,
                model_id=probes.model_id,
                title=f"Probe eval on {Path(args.cache).name}: {probes.model_id}, {probes.method}, pooling={probes.pooling}",
            ),
            args.plot,
        )
    # Notes come after the outputs are written, so a failed write reports one line only.
    _say_threshold(args)
    if info.get("model_mismatch"):
        _say(f"probe: note: probe model {probes.model_id!r} differs from the cache's {info['eval_model_id']!r} (allowed)")
    if info["eval_rows"] == "held-out":
        _say("probe: this cache is the probe's training data; scored its held-out rows only (--all-rows to override)")
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    import numpy as np

    from geomprobe.core.hooks import hook_layer
    from geomprobe.probes import transfer_matrix

    check_command_outputs(args)
    method, params = kind_params(args, {"C": "C"})
    result = transfer_matrix(args.caches, method, hooks=args.hooks, pooling=args.pooling, seed=args.seed, fpr=args.fpr, **params)
    n = len(result.names)
    off = ~np.eye(n, dtype=bool)
    mean_off = np.nanmean(result.auroc[off], axis=0) if n > 1 else np.nanmean(result.auroc[0, 0:1], axis=0)
    best = int(np.nanargmax(mean_off))
    print(
        f"transfer AUROC at {result.hooks[best]}, the hook with the highest mean off-diagonal AUROC (a maximum over "
        f"{len(result.hooks)} hooks on these rows: optimistic) (rows: trained on, cols: evaluated on; diagonal = held-out)"
    )
    for i, name in enumerate(result.names):
        print(f"{name:<24} " + " ".join(f"{v:6.3f}" for v in result.auroc[i, :, best]))
    write_json(
        args.json,
        {
            "method": method,
            "params": params,
            "caches": result.names,
            "model_ids": result.model_ids,
            "hooks": result.hooks,
            "best_hook": result.hooks[best],
            "records": result.records(),
            "per_layer": [
                {"hook": h, "layer": hook_layer(h), "auroc": float(mean_off[k]), "auroc_is": "mean off-diagonal transfer AUROC"}
                for k, h in enumerate(result.hooks)
            ],
        },
    )
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.probes import plot_transfer_matrix

        save_figure(plot_transfer_matrix(result.names, result.auroc[:, :, best], hook=result.hooks[best]), args.plot)
    return 0
