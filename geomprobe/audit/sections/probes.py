"""Probes section: linear honesty probes of several types at each audited layer, evaluated honestly.

``mean`` pooling over the assistant statement; a pair-respecting split; held-out AUROC and recall
at ``fpr`` (a size) with the threshold taken from the control set. Plots AUROC by layer and the
token-level scores of the best probe on a few held-out prompts.
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
    methods: tuple[str, ...] = size(("logistic", "mean-diff", "lda", "pca-diff"), ("logistic", "mean-diff", "pca-diff"),
                                    doc="probe types trained at every layer (the first is the primary one)")
    fpr: float = size(0.01, doc="false-positive rate on the control set that sets the recall threshold")
    test_size: float = size(0.25, doc="held-out fraction (pairs kept together)")
    token_prompts: int = size(4, 2, doc="held-out prompts in the token-score plot")
    deception_questions: int = size(40, 16, doc="questions per instruction of the deception check (0: skipped unless "
                                                "a set is given)")
    deception_tokens: int = size(24, 16, doc="answer tokens generated per question")
    deception_bootstrap: int = size(100, 50, doc="bootstrap replicates of the deception check's AUROC intervals")

    def __post_init__(self) -> None:
        if not self.methods:
            raise GeomprobeError("audit sizes need some probe methods")


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

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProbeLayer:
        """One record of ``train_probes``; undefined float metrics (NaN) become None."""

        def number(key: str) -> Any:
            return finite(record[key]) if isinstance(record[key], float) else record[key]

        return cls(layer=record["layer"], hook=record["hook"], method=record["method"], auroc=number("auroc"),
                   recall_at_fpr=number("recall_at_fpr"), balanced_accuracy=number("balanced_accuracy"),
                   threshold=number("threshold"), n_eval=number("n_eval"))


@dataclass
class BestProbe:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    method: str = doc("probe type")
    auroc: float | None = doc("held-out AUROC")
    recall_at_fpr: float | None = doc("recall at the control threshold")


@dataclass
class ProbesResult:
    """metrics.json ``probes``: every (method, layer) held-out, the primary method's lists, the best."""

    hook_kind: str = doc("hook kind read")
    pooling: str = doc("pooling read")
    dtype: str = doc("score dtype (float64)")
    positive_label: str = doc("positive class")
    negative_labels: list[str] = doc("negative classes")
    primary_method: str = doc("method of `probes.auroc` / `probes.recall_at_fpr`")
    methods: list[str] = doc("methods trained")
    fpr: float = doc("control false-positive rate of the threshold")
    threshold_source: str = doc("`control`: (1 - fpr) quantile of scores on the control set")
    n_train: int = doc("training rows")
    n_test: int = doc("held-out rows (no pair split across train/test)")
    per_layer: list[ProbeLayer] = doc("one record per (method, layer)")
    auroc: list[float | None] = doc("held-out AUROC of the primary method per layer")
    recall_at_fpr: list[float | None] = doc("recall at `fpr` of the primary method per layer")
    best: BestProbe = doc("best (method, layer) by AUROC")
    deception: DeceptionCheck | None = doc("the primary probe on the model's own graded true/false answers "
                                           "(null when skipped)", default=None)
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
        probes, result = train_probes(ctx.caches["honesty"], method, hooks=ctx.hooks, pooling="mean",
                                      test_size=sizes.test_size, seed=ctx.options.seed, control=ctx.caches["control"],
                                      fpr=sizes.fpr, device=ctx.options.device)
        trained[method] = (probes, result)
        per_layer += [ProbeLayer.from_record(r) for r in result.records]
    primary = sizes.methods[0]
    probes, result = trained[primary]
    prim = [r for r in per_layer if r.method == primary]
    valid = [r for r in per_layer if r.auroc is not None]
    # ties go to the primary method
    best = max(valid, key=lambda r: (r.auroc, r.method == primary)) if valid else prim[0]
    split = probes.meta.get("split", {})
    return ProbesResult(
        hook_kind=HOOK_KIND, pooling="mean", dtype="float64", positive_label=probes.positive_label,
        negative_labels=list(probes.meta.get("negative_labels", [])), primary_method=primary,
        methods=list(sizes.methods), fpr=sizes.fpr,
        threshold_source=result.records[0].get("threshold_source", "control") if result.records else "control",
        n_train=int(split.get("n_train", 0)), n_test=int(split.get("n_test", 0)), per_layer=per_layer,
        auroc=[r.auroc for r in prim], recall_at_fpr=[r.recall_at_fpr for r in prim],
        best=BestProbe(best.layer, best.hook, best.method, best.auroc, best.recall_at_fpr), trained=trained,
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
        scores.append(probes.decision_function(hook, X[offset:offset + count]))
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
        message = ("probes on the --against model" if ctx.is_against
                   else f"training {', '.join(sizes.methods)} probes")
        result: ProbesResult = ctx.clock.run("probes", message, lambda: train_all(ctx))
        if not ctx.is_against and (ctx.options.deception_set is not None or sizes.deception_questions > 0):
            what = ctx.options.deception_set or f"{sizes.deception_questions} questions x 2 instructions"
            result.deception = ctx.clock.run("probes", f"honesty probe on the model's own answers ({what})",
                                             lambda: deception_check(ctx, result.trained[result.primary_method][0]))
        return result

    def settings(self, ctx: AuditContext) -> ProbesSettings:
        sizes = ctx.sizes.probes
        return ProbesSettings("mean", list(sizes.methods), sizes.methods[0], sizes.test_size, sizes.fpr)

    def compare(self, a: ProbesResult, b: ProbesResult) -> Paired:
        primary = a.primary_method
        return paired([r for r in a.per_layer if r.method == primary], [r for r in b.per_layer if r.method == primary],
                      "auroc")

    def figures(self, ctx: AuditContext, result: ProbesResult, metrics: dict[str, Any]) -> list[FigureRef]:
        from geomprobe.plots.overview import plot_token_scores
        from geomprobe.plots.probes import plot_probe_layers

        model_id = ctx.short_model_id
        refs = [ctx.save_figure("probe_layers", self.name, "Held-out probe AUROC and recall by layer, per probe type",
                                plot_probe_layers(metrics["probes"]["per_layer"], model_id=model_id))]
        best = result.best
        tokens, scores, starts, labels = token_example(ctx.model, ctx.sets["honesty"], result.trained[best.method][0],
                                                       best.hook, ctx.sizes.probes.token_prompts)
        refs.append(ctx.save_figure(
            "token_scores", self.name, f"Token-level scores of the best probe ({best.method}, layer {best.layer})",
            plot_token_scores(tokens, scores, response_start=starts, labels=labels, model_id=model_id, hook=best.hook,
                              pooling="mean"),
            "held-out honesty prompts; the probe was trained on the mean over the statement"))
        return refs

    def summary_line(self, metrics: dict[str, Any]) -> str:
        best = metrics["probes"]["best"]
        return f"best probe AUROC {fmt(best['auroc'])} ({best['method']}, layer {best['layer']})"

    def summary_rows(self, metrics: dict[str, Any]) -> list[list[str]]:
        probes = metrics.get("probes") or {}
        best = probes.get("best") or {}
        if not best:
            return []
        rows = [["best probe AUROC",
                 f"{fmt(best.get('auroc'))} ({best.get('method', '')}, layer {fmt(best.get('layer'))}; "
                 f"recall {fmt(best.get('recall_at_fpr'))} at {fmt(probes.get('fpr'))} control FPR)"]]
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
        rows = [[fmt(layer)] + [fmt((by_layer[layer].get(m) or {}).get("auroc")) for m in methods]
                + [fmt((by_layer[layer].get(primary) or {}).get("recall_at_fpr"))] for layer in sorted(by_layer)]
        block.tables.append(Table("Held-out AUROC per layer",
                                  ["layer", *[f"AUROC {m}" for m in methods], f"recall ({primary})"], rows))
        if p.get("deception"):
            block.tables.append(deception_table(p["deception"]))
        return block


def deception_summary(d: dict[str, Any]) -> str:
    """Best-layer pooled and within-condition AUROC, or why they could not be computed."""
    if d["status"] != "computed":
        return d["status"]
    parts = []
    for cond in ["pooled", *[c for c in d["computable"] if c != "pooled"]]:
        rows = [r for r in d["per_condition"] if r["condition"] == cond and r["auroc"] is not None]
        if rows:
            r = max(rows, key=lambda r: r["auroc"])
            parts.append(f"{cond} {fmt(r['auroc'])} (layer {fmt(r['layer'])})")
    return "; ".join(parts) or "not computable"
