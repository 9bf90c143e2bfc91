"""Probes section: linear honesty probes of several types at each audited layer, evaluated honestly.

``mean`` pooling over the assistant statement; a pair-respecting split; held-out AUROC and recall
at ``fpr`` (a size) with the threshold taken from the control set. The headline (method, layer) is
chosen on a validation split carved from the training rows and reported with its held-out AUROC and
a bootstrap interval; the maximum over (method, layer) on the held-out rows is kept as ``best``,
labelled as a maximum. Plots AUROC by layer and the token-level scores of the headline probe on a
few held-out prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.audit.context import HOOK_KIND, AuditContext, as_metrics, finite, internal
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.deception import DeceptionCheck, deception_check, deception_table
from geomprobe.audit.sections.paired import Paired, paired
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import FigureRef, ReportBlock, Table, fmt, where
from geomprobe.core.errors import GeomprobeError


@dataclass(frozen=True)
class ProbesSizes:
    methods: tuple[str, ...] = size(
        ("logistic", "mean-diff", "lda", "pca-diff-uncentered"),
        ("logistic", "mean-diff", "pca-diff-uncentered"),
        doc="registered probe kinds trained at every layer (the first is the primary one)",
    )
    fpr: float = size(0.01, doc="false-positive rate on the control set that sets the recall threshold")
    test_size: float = size(0.25, doc="held-out fraction (pairs kept together)")
    token_prompts: int = size(4, 2, doc="held-out prompts in the token-score plot")
    deception_questions: int = size(
        40, 16, doc="questions per instruction of the deception check (0: skipped unless a set is given)"
    )
    deception_tokens: int = size(24, 16, doc="answer tokens generated per question")
    deception_bootstrap: int = size(100, 50, doc="bootstrap replicates of the deception check's AUROC intervals")
    headline_bootstrap: int = size(1000, 200, doc="bootstrap replicates of the headline probe's held-out AUROC interval")

    def __post_init__(self) -> None:
        if not self.methods:
            raise GeomprobeError("audit sizes need some probe methods")
        # Any registered probe kind (geomprobe.probes.register_probe_kind), by its current name;
        # an unknown one is refused here, before any model is loaded.
        from geomprobe.probes import canonical_method

        object.__setattr__(self, "methods", tuple(canonical_method(m, depth=3) for m in self.methods))


@dataclass
class ProbesSettings:
    pooling: str = doc("pooling read (`mean`: mean over the assistant statement = mean token score)")
    methods: list[str] = doc("probe types trained at every layer")
    primary_method: str = doc("method whose numbers fill `probes.auroc` / `probes.recall_at_fpr`")
    test_size: float = doc("held-out fraction (pairs kept together)")
    fpr: float = doc("false-positive rate on the control set that sets the recall threshold")


@dataclass
class ProbeLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    method: str = doc("probe type")
    auroc: float | None = doc("held-out AUROC")
    recall_at_fpr: float | None = doc("held-out recall of dishonest rows at the control threshold")
    balanced_accuracy: float | None = doc("held-out balanced accuracy at score 0")
    threshold: float | None = doc("score threshold from the control set")
    n_eval: int = doc("held-out rows scored")
    validation_auroc: float | None = doc(
        "AUROC on the validation split carved from the training rows (the headline is chosen on it; null: too few training rows)",
        default=None,
    )

    @classmethod
    def from_record(cls, record: dict[str, Any], validation: float | None = None) -> ProbeLayer:
        """One record of ``train_probes``; undefined float metrics (NaN) become None."""

        def number(key: str) -> Any:
            return finite(record[key]) if isinstance(record[key], float) else record[key]

        return cls(
            layer=record["layer"],
            hook=record["hook"],
            method=record["method"],
            auroc=number("auroc"),
            recall_at_fpr=number("recall_at_fpr"),
            balanced_accuracy=number("balanced_accuracy"),
            threshold=number("threshold"),
            n_eval=number("n_eval"),
            validation_auroc=finite(validation),
        )


@dataclass
class BestProbe:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    method: str = doc("probe type")
    auroc: float | None = doc("held-out AUROC (the maximum over `n_candidates`, taken on the held-out rows themselves)")
    recall_at_fpr: float | None = doc("recall at the control threshold")
    n_candidates: int = doc("(method, layer) pairs the maximum is taken over", default=0)


@dataclass
class ProbeHeadline:
    """The reported probe: (method, layer) chosen on the validation split of the training rows."""

    method: str = doc("probe type")
    layer: int = doc("block index")
    hook: str = doc("hook name")
    chosen_on: str = doc(
        "what the (method, layer) was chosen on: `validation split of the training rows`, or "
        "`fixed in advance: ...` when the training rows are too few for one"
    )
    validation_auroc: float | None = doc("its AUROC on that validation split")
    auroc: float | None = doc("its held-out AUROC (rows the choice never saw)")
    auroc_ci_low: float | None = doc("stratified bootstrap interval of `auroc`, low")
    auroc_ci_high: float | None = doc("high")
    recall_at_fpr: float | None = doc("held-out recall at the control threshold")
    n_test: int = doc("held-out rows")
    n_candidates: int = doc("(method, layer) pairs chosen among")


@dataclass
class ProbesResult:
    """metrics.json ``probes``: every (method, layer) held-out, the primary method's lists, the best."""

    hook_kind: str = doc("hook kind read")
    pooling: str = doc("pooling read")
    dtype: str = doc("score dtype (float64)")
    positive_label: str = doc("positive class")
    negative_labels: list[str] = doc("negative classes")
    primary_method: str = doc("method of `probes.auroc` / `probes.recall_at_fpr`")
    methods: list[str] = doc("methods trained (registered probe kinds)")
    params: dict[str, dict[str, Any]] = doc(
        "each method's parameters as fitted (method -> parameters)",
        items=(
            "one method's parameters, `standardize` and what its fit recorded",
            ("one parameter's value", "number|string|bool|list[number]|null"),
        ),
    )
    fpr: float = doc("control false-positive rate of the threshold")
    threshold_source: str = doc("`control`: (1 - fpr) quantile of scores on the control set")
    n_train: int = doc("training rows")
    n_test: int = doc("held-out rows (no pair split across train/test)")
    per_layer: list[ProbeLayer] = doc("one record per (method, layer)")
    auroc: list[float | None] = doc("held-out AUROC of the primary method per layer")
    recall_at_fpr: list[float | None] = doc("recall at `fpr` of the primary method per layer")
    best: BestProbe = doc(
        "(method, layer) with the highest held-out AUROC: a maximum over layers on the held-out "
        "rows, optimistic; the reported number is `probes.headline`"
    )
    headline: ProbeHeadline | None = doc(
        "the reported probe: chosen on a validation split of the training rows, held-out AUROC with its interval", default=None
    )
    deception: DeceptionCheck | None = doc(
        "the primary probe on the model's own graded true/false answers (null when skipped)", default=None
    )
    trained: dict[str, tuple[Any, Any]] = internal()  # method -> (probes, train_probes result)

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def train_all(ctx: AuditContext) -> ProbesResult:
    """Train every probe type of ``ctx.sizes`` on ``ctx``'s honesty cache; pick the best (method, layer)."""
    from geomprobe.probes import train_probes

    sizes = ctx.sizes.probes
    trained: dict[str, tuple[Any, Any]] = {}
    per_layer: list[ProbeLayer] = []
    for method in sizes.methods:
        probes, result = train_probes(
            ctx.caches["honesty"],
            method,
            hooks=ctx.hooks,
            pooling="mean",
            test_size=sizes.test_size,
            seed=ctx.options.seed,
            control=ctx.caches["control"],
            fpr=sizes.fpr,
            device=ctx.options.device,
        )
        trained[method] = (probes, result)
        validation = (probes.meta.get("selection") or {}).get("validation_auroc") or [None] * len(result.records)
        per_layer += [ProbeLayer.from_record(r, v) for r, v in zip(result.records, validation)]
    primary = sizes.methods[0]
    probes, result = trained[primary]
    prim = [r for r in per_layer if r.method == primary]
    valid = [r for r in per_layer if r.auroc is not None]
    # ties go to the primary method
    best = max(valid, key=lambda r: (r.auroc, r.method == primary)) if valid else prim[0]
    head = probe_headline(trained, per_layer, primary, n_bootstrap=sizes.headline_bootstrap, seed=ctx.options.seed)
    split = probes.meta.get("split", {})
    return ProbesResult(
        hook_kind=HOOK_KIND,
        pooling="mean",
        dtype="float64",
        positive_label=probes.positive_label,
        negative_labels=list(probes.meta.get("negative_labels", [])),
        primary_method=primary,
        methods=list(sizes.methods),
        params={m: dict(trained[m][0].fit.params) for m in sizes.methods},
        fpr=sizes.fpr,
        threshold_source=result.records[0].get("threshold_source", "control") if result.records else "control",
        n_train=int(split.get("n_train", 0)),
        n_test=int(split.get("n_test", 0)),
        per_layer=per_layer,
        auroc=[r.auroc for r in prim],
        recall_at_fpr=[r.recall_at_fpr for r in prim],
        best=BestProbe(best.layer, best.hook, best.method, best.auroc, best.recall_at_fpr, len(per_layer)),
        headline=head,
        trained=trained,
    )


def choose_headline(per_layer: list[ProbeLayer], primary: str) -> tuple[ProbeLayer, str]:
    """The (method, layer) with the highest validation AUROC (ties: the primary method, then the shallower
    layer), chosen on the training rows only; without validation numbers, the primary method at the middle
    audited layer, fixed in advance. Never the held-out AUROC: that is the number reported."""
    scored = [r for r in per_layer if r.validation_auroc is not None]
    if scored:
        return (
            max(scored, key=lambda r: (r.validation_auroc, r.method == primary, -r.layer)),
            "validation split of the training rows",
        )
    prim = [r for r in per_layer if r.method == primary]
    return prim[
        len(prim) // 2
    ], "fixed in advance: the primary method at the middle audited layer (too few training rows for a validation split)"


def probe_headline(
    trained: dict[str, tuple[Any, Any]], per_layer: list[ProbeLayer], primary: str, *, n_bootstrap: int, seed: int
) -> ProbeHeadline:
    """The headline probe of :func:`choose_headline`, with its held-out AUROC and bootstrap interval."""
    from geomprobe.probes.selection import headline

    chosen, rule = choose_headline(per_layer, primary)
    result = trained[chosen.method][1]
    read = headline(result, chosen.hook, rule, n_bootstrap=n_bootstrap, seed=seed)
    return ProbeHeadline(
        chosen.method,
        chosen.layer,
        chosen.hook,
        rule,
        chosen.validation_auroc,
        finite(read.auroc),
        finite(read.auroc_ci_low),
        finite(read.auroc_ci_high),
        chosen.recall_at_fpr,
        len(result.y),
        len(per_layer),
    )


def token_example(model: Any, honesty: Any, probes: Any, hook: str, n: int) -> tuple[list, list, list, list]:
    """Token strings, per-token scores, response starts and labels of ``n`` held-out honesty prompts."""
    from geomprobe.activations.collect import pooled_activations
    from geomprobe.activations.datasets import PromptSet

    test_rows = [int(v) for v in probes.meta["split"]["test_rows"]]
    by_label: dict[int, list[int]] = {}
    for row in test_rows:
        by_label.setdefault(int(honesty.prompts[row].label), []).append(row)
    chosen: list[int] = []
    while len(chosen) < n and any(by_label.values()):  # alternate the classes
        for cls in sorted(by_label):
            if by_label[cls] and len(chosen) < n:
                chosen.append(by_label[cls].pop(0))
    subset = PromptSet(honesty.name, [honesty.prompts[i] for i in chosen], honesty.label_names, honesty.sha256, honesty.path)
    rendered = subset.render(model.tokenizer)
    X = pooled_activations(model, subset, hooks=[hook], poolings=("all",))[hook]["all"]
    tokens, scores, starts, labels = [], [], [], []
    offset = 0
    for prompt, r in zip(subset.prompts, rendered):
        count = len(r.token_ids)
        tokens.append([model.tokenizer.decode([t]) for t in r.token_ids])
        scores.append(probes.decision_function(hook, X[offset : offset + count]))
        starts.append(int(r.span[0]))
        labels.append(honesty.label_names[prompt.label])
        offset += count
    return tokens, scores, starts, labels


class ProbesSection(AuditSection):
    name = "probes"
    title = "Honesty probes"
    description = "linear honesty probes (dishonest = positive), held-out evaluation"
    Sizes = ProbesSizes
    result_type = ProbesResult
    settings_key = "probes"
    settings_type = ProbesSettings
    settings_doc = "probe settings"
    comparison_type = Paired
    comparison_doc = "primary-method held-out AUROC, each checkpoint's own probes"
    comparison_label = "AUROC"
    figure_keys = ("probe_layers", "token_scores")

    def run(self, ctx: AuditContext) -> ProbesResult:
        sizes = ctx.sizes.probes
        message = "probes on the --against model" if ctx.is_against else f"training {', '.join(sizes.methods)} probes"
        result: ProbesResult = ctx.clock.run("probes", message, lambda: train_all(ctx))
        if not ctx.is_against and (ctx.options.deception_set is not None or sizes.deception_questions > 0):
            what = ctx.options.deception_set or f"{sizes.deception_questions} questions x 2 instructions"
            at = honesty_layer(result.per_layer, result.primary_method)
            result.deception = ctx.clock.run(
                "probes",
                f"honesty probe on the model's own answers ({what})",
                lambda: deception_check(ctx, result.trained[result.primary_method][0], at),
            )
        return result

    def settings(self, ctx: AuditContext) -> ProbesSettings:
        sizes = ctx.sizes.probes
        return ProbesSettings("mean", list(sizes.methods), sizes.methods[0], sizes.test_size, sizes.fpr)

    def compare(self, a: ProbesResult, b: ProbesResult) -> Paired:
        primary = a.primary_method
        return paired([r for r in a.per_layer if r.method == primary], [r for r in b.per_layer if r.method == primary], "auroc")

    def figures(self, ctx: AuditContext, result: ProbesResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.overview import plot_token_scores
        from geomprobe.plots.probes import plot_probe_layers

        model_id = ctx.short_model_id
        refs = [
            ctx.save_figure(
                "probe_layers",
                self.name,
                "Held-out probe AUROC and recall by layer, per probe type",
                plot_probe_layers(metrics["probes"]["per_layer"], model_id=model_id),
            )
        ]
        shown: Any = result.headline or result.best
        tokens, scores, starts, labels = token_example(
            ctx.model, ctx.sets["honesty"], result.trained[shown.method][0], shown.hook, ctx.sizes.probes.token_prompts
        )
        refs.append(
            ctx.save_figure(
                "token_scores",
                self.name,
                f"Token-level scores of the headline probe ({shown.method}, layer {shown.layer})",
                plot_token_scores(
                    tokens, scores, response_start=starts, labels=labels, model_id=model_id, hook=shown.hook, pooling="mean"
                ),
                "held-out honesty prompts; the probe was trained on the mean over the statement",
            )
        )
        return refs

    def summary_line(self, metrics: dict[str, Any]) -> str:
        p = metrics["probes"]
        head = p.get("headline")
        if not head:  # an audit written before the headline existed
            return f"max held-out probe AUROC {fmt(p['best']['auroc'])} ({p['best']['method']}, layer {p['best']['layer']})"
        how = "chosen on a validation split" if head["chosen_on"].startswith("validation") else "fixed in advance"
        return (
            f"probe AUROC {fmt(head['auroc'])} [{fmt(head['auroc_ci_low'])}, {fmt(head['auroc_ci_high'])}] "
            f"({head['method']}, layer {head['layer']}, {how})"
        )

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        probes = metrics.get("probes") or {}
        best = probes.get("best") or {}
        if not best:
            return []
        head = probes.get("headline")
        rows = []
        if head:
            rows.append(
                [
                    "probe AUROC, held-out (layer chosen on training rows)",
                    f"{fmt(head.get('auroc'))} [{fmt(head.get('auroc_ci_low'))}, {fmt(head.get('auroc_ci_high'))}] "
                    f"({head.get('method', '')}, layer {fmt(head.get('layer'))}, chosen on the {head.get('chosen_on', '')}; "
                    f"recall {fmt(head.get('recall_at_fpr'))} at {fmt(probes.get('fpr'))} control FPR)",
                ]
            )
        n = best.get("n_candidates") or len(probes.get("per_layer", []))
        rows.append(
            [
                f"max held-out probe AUROC over {n} (method, layer) pairs",
                f"{fmt(best.get('auroc'))} ({best.get('method', '')}, layer {fmt(best.get('layer'))}; a maximum taken "
                f"on the held-out rows it is read on: optimistic, multiple comparisons)",
            ]
        )
        d = probes.get("deception")
        if d:
            rows.append(["probe on the model's own lies", deception_summary(d)])
        return rows

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        p = metrics["probes"]
        block = ReportBlock(self.name, self.title)
        block.paragraphs.append(
            f"positive: {p.get('positive_label', '')} vs {', '.join(p.get('negative_labels', []))}; {where(p)}; "
            f"trained on {fmt(p.get('n_train'))} rows, evaluated on {fmt(p.get('n_test'))} held-out rows (pairs never "
            f"split). Recall at {fmt(p.get('fpr'))} FPR uses the threshold from the {p.get('threshold_source', '')} set."
        )
        methods = list(p.get("methods", []))
        by_layer: dict[int, dict[str, dict]] = {}
        for r in p.get("per_layer", []):
            by_layer.setdefault(r["layer"], {})[r["method"]] = r
        primary = p.get("primary_method", methods[0] if methods else "")
        head = p.get("headline") or {}

        def cell(layer: int, m: str) -> str:
            r = by_layer[layer].get(m) or {}
            mark = " (headline)" if (head.get("layer"), head.get("method")) == (layer, m) else ""
            return f"{fmt(r.get('auroc'))} (val {fmt(r.get('validation_auroc'))}){mark}"

        rows = [
            [fmt(layer)] + [cell(layer, m) for m in methods] + [fmt((by_layer[layer].get(primary) or {}).get("recall_at_fpr"))]
            for layer in sorted(by_layer)
        ]
        params = p.get("params") or {}
        shown = {
            m: ", ".join(
                f"{k}={fmt(v) if isinstance(v, float) else v}"
                for k, v in (params.get(m) or {}).items()
                if not isinstance(v, list)
            )
            for m in methods
        }
        if head:
            block.paragraphs.append(
                f"Headline: {head.get('method', '')} at layer {fmt(head.get('layer'))}, chosen on the "
                f"{head.get('chosen_on', '')} (validation AUROC {fmt(head.get('validation_auroc'))}); held-out AUROC "
                f"{fmt(head.get('auroc'))} [{fmt(head.get('auroc_ci_low'))}, {fmt(head.get('auroc_ci_high'))}] on "
                f"{fmt(head.get('n_test'))} rows the choice never saw. The largest held-out AUROC in the table, "
                f"{fmt((p.get('best') or {}).get('auroc'))}, is a maximum over {fmt(head.get('n_candidates'))} (method, layer) "
                "pairs taken on the rows it is read on, so it is optimistic (multiple comparisons)."
            )
        block.tables.append(
            Table(
                "Held-out AUROC per layer (validation AUROC, on a split of the training rows)",
                ["layer", *[f"AUROC {m}" for m in methods], f"recall ({primary})"],
                rows,
                note="parameters: " + "; ".join(f"{m}: {shown[m]}" for m in methods if shown[m]),
            )
        )
        if p.get("deception"):
            block.tables.append(deception_table(p["deception"]))
        return block


def honesty_layer(per_layer: list[ProbeLayer], method: str) -> tuple[int, str]:
    """(layer, hook) where ``method`` has its highest held-out AUROC on the honesty set: chosen on rows
    disjoint from the model's own answers, where the deception check's headline is read."""
    rows = [r for r in per_layer if r.method == method]
    scored = [r for r in rows if r.auroc is not None]
    chosen = max(scored, key=lambda r: (r.auroc, -r.layer)) if scored else rows[len(rows) // 2]
    return chosen.layer, chosen.hook


def deception_summary(d: dict[str, Any]) -> str:
    """Pooled and within-condition AUROC with intervals at the layer chosen on the honesty held-out split,
    then the pooled maximum over layers labelled as one; or why nothing could be computed."""
    if d["status"] != "computed":
        return d["status"]
    head = d.get("headline")
    parts = []
    if head:
        for r in [r for r in head["per_condition"] if r["condition"] == "pooled" or r["condition"] in d["computable"]]:
            parts.append(
                f"{r['condition']} {fmt(r['auroc'])} [{fmt(r['auroc_ci_low'])}, {fmt(r['auroc_ci_high'])}] "
                f"({r['n_positive']} false / {r['n_negative']} true)"
            )
        parts = [f"at layer {fmt(head['layer'])} (chosen on the {head['chosen_on']}): " + "; ".join(parts)]
    pooled = [r for r in d["per_condition"] if r["condition"] == "pooled" and r["auroc"] is not None]
    if pooled:
        top = max(pooled, key=lambda r: r["auroc"])
        layers = len({r["layer"] for r in d["per_condition"]})
        parts.append(
            f"max over {layers} layers: pooled {fmt(top['auroc'])} (layer {fmt(top['layer'])}; chosen on "
            "these answers: optimistic, multiple comparisons)"
        )
    return "; ".join(parts) or "not computable"
